"""`guardstream topics …`: the topic catalogue."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Column

from guardstream.cli.common import err, load_settings, out
from guardstream.cli.output import json_lines, table
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
def topics_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object a line instead of the table.")
    ] = False,
) -> None:
    """Print the catalogue: topic (with this deployment's namespace), partitions, key,
    retention and purpose. Names are never cut: a narrow terminal folds them."""
    names = TopicNames(load_settings().namespace)
    if as_json:
        json_lines(
            {
                "topic": names[spec.topic],
                "catalogue_name": spec.topic.value,
                "partitions": spec.partitions,
                "key": spec.key,
                "retention_ms": spec.retention_ms,
                "purpose": spec.purpose,
            }
            for spec in CATALOGUE
        )
        return
    listing = table(
        # Names get the largest share of the width (folded, never cut, when it is too narrow).
        Column("topic", ratio=3),
        Column("partitions", justify="right"),
        Column("key", ratio=1),
        Column("retention", justify="right"),
        Column("purpose", ratio=2),
    )
    for spec in CATALOGUE:
        listing.add_row(
            names[spec.topic],
            str(spec.partitions),
            spec.key,
            f"{spec.retention_ms / 86_400_000:g} d",
            spec.purpose,
        )
    out.print(listing)
