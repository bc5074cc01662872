"""`guardstream maintenance`: run every retention job once (what the chart's CronJob runs)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape

from guardstream.cli.common import err, load_settings, out
from guardstream.runtime import logs, telemetry


def maintenance(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Purge what each store keeps past its retention (GUARDSTREAM_RETENTION_*): decided posts'
    texts, tasks and reviews, unreviewed texts, relayed outbox rows, audit rows, expired
    tokens and sessions, the author index, archive days; check the topics' retention.
    Idempotent; concurrent runs wait for one another's advisory lock (or skip: exit 0 with a
    note). Exit 1 when a store was unreachable or a topic's retention could not be set."""
    settings = load_settings()
    logs.configure(settings.process.log_level)
    # lazy: asyncpg and the review store only for this command
    from guardstream.devtools.maintenance import STORE_ERRORS, run_maintenance

    try:
        handle = telemetry.setup(settings, "maintenance")
    except telemetry.TelemetryError as exc:
        err.print(f"[red]maintenance cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        report = asyncio.run(run_maintenance(settings))
    except STORE_ERRORS as exc:
        err.print(f"[red]maintenance incomplete:[/red] {type(exc).__name__}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        handle.shutdown()
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "ran": report.ran,
                    "purged": report.purged,
                    "oldest_age_s": report.oldest_age_s,
                    "problems": report.problems,
                }
            )
        )
    elif not report.ran:
        out.print("another maintenance run holds the lock: nothing done")
    else:
        for store, count in report.purged.items():
            age = report.oldest_age_s.get(store)
            kept = f", oldest kept {age / 86400:.1f} d" if age is not None else ""
            out.print(f"{store}: purged {count}{kept}")
    for problem in report.problems:
        err.print(f"[red]{escape(problem)}[/red]")
    if report.problems:
        raise typer.Exit(1)
