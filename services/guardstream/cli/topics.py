"""`guardstream topics …`: the topic catalogue."""

from __future__ import annotations

import asyncio

import typer
from rich.table import Table

from guardstream.cli.common import err, load_settings, out
from guardstream.contracts.topics import CATALOGUE, TopicNames
from guardstream.runtime.kafka import ensure_topics

app = typer.Typer(no_args_is_help=True, help="The topic catalogue.")


@app.command("create")
def topics_create() -> None:
    """Create every catalogue topic that does not exist yet (idempotent)."""
    # lazy: faust-streaming only where the SLA changelog is made
    from guardstream.sla.app import changelog_topic, ensure_changelog

    settings = load_settings()
    report = asyncio.run(ensure_topics(settings))
    # The SLA app's table changelog (co-partitioned with its sources) is created up front too.
    sla_changelog = "created " if asyncio.run(ensure_changelog(settings)) else "exists  "
    out.print(f"{sla_changelog} {changelog_topic(settings)}")
    for name in report.created:
        out.print(f"created  {name}")
    for name in report.existing:
        out.print(f"exists   {name}")
    for name in report.mismatched:
        err.print(f"[yellow]partition count differs from the catalogue:[/yellow] {name}")


@app.command("list")
def topics_list() -> None:
    """Print the catalogue: topic, partitions, key, retention."""
    names = TopicNames(load_settings().namespace)
    table = Table("topic", "partitions", "key", "retention (days)", "purpose")
    for spec in CATALOGUE:
        table.add_row(
            names[spec.topic],
            str(spec.partitions),
            spec.key,
            f"{spec.retention_ms / 86_400_000:g}",
            spec.purpose,
        )
    out.print(table)
