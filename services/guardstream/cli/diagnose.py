"""`guardstream settings | doctor | calibrate`: look at a deployment — its effective
configuration, whether its parts answer, how well its confidences are calibrated."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError

from guardstream.cli.common import err, load_settings, out
from guardstream.cli.output import add_column, json_lines, table
from guardstream.runtime.settings import Settings, every_setting, settings_sources
from guardstream.scorer.calibration import load, reliability, slices


def settings(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object a line instead of the table.")
    ] = False,
) -> None:
    """Show the effective configuration (secrets masked) with each setting's env name, and
    where it came from (the environment, the env file, defaults)."""
    current = load_settings().public_view()
    if as_json:
        json_lines(
            {"setting": field.path, "env": list(field.env), "value": current[field.path]}
            for field in every_setting()
        )
        return
    out.print(f"settings from {settings_sources().describe()}", markup=False, highlight=False)
    listing = table("setting", "env", "value")
    for field in every_setting():
        listing.add_row(field.path, ", ".join(field.env), str(current[field.path]))
    out.print(listing)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check this deployment: broker, topics, Redis, PostgreSQL, model files, policy packs.

    Each check prints ok / warn / FAIL with what was found and how to fix it. Exit 1 when any
    check failed. Nothing is created, downloaded or started; secrets are never printed."""
    # lazy: asyncpg (the review database check) only for this command
    from guardstream.devtools import doctor as checks

    try:
        current = Settings()
    except ValidationError as exc:
        finding = checks.fail(
            "config", f"invalid configuration: {exc}", "fix the environment variables named above"
        )
        if as_json:
            sys.stdout.write(orjson.dumps({"ok": False, "checks": [finding.as_dict()]}).decode())
            sys.stdout.write("\n")
        else:
            out.print(checks.render_text([finding]), markup=False, highlight=False)
        raise typer.Exit(1) from None
    # The report says what the clients' own retry logs would: keep them out of it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # Where the settings came from first: a value from a forgotten .env surprises most.
    findings = [checks.ok("settings", settings_sources().describe())]
    # A spinner on a terminal (stderr) while unreachable parts run into their timeouts.
    with err.status("checking the broker, topics, Redis, PostgreSQL, model files, policies"):
        findings += asyncio.run(checks.diagnose(current))
    if as_json:
        sys.stdout.write(orjson.dumps(checks.report(current, findings)).decode() + "\n")
    else:
        out.print(checks.render_text(findings), markup=False, highlight=False, soft_wrap=True)
    if not checks.healthy(findings):
        raise typer.Exit(1)


def calibrate(
    path: Annotated[Path, typer.Argument(help="Labelled JSONL (the feedback archive format).")],
    bins: Annotated[int, typer.Option(min=2, max=50, help="Equal-width confidence bins.")] = 10,
) -> None:
    """Reliability table (confidence bins vs accuracy) and ECE, overall and per language and
    per predicted category. Lines that cannot be used are listed by number, never dropped
    silently."""

    if not path.is_file():
        err.print(f"no such file: {path}")
        raise typer.Exit(2)
    items, problems = load(path)
    for number, problem in problems[:20]:
        err.print(f"line {number}: {problem} (left out)")
    if len(problems) > 20:
        err.print(f"... and {len(problems) - 20} more lines left out")
    if not items:
        err.print(f"no usable lines in {path} ({len(problems)} left out)")
        raise typer.Exit(2)

    overall = reliability(items, bins)
    bins_table = table(title=f"Reliability ({overall.count} items, {len(problems)} left out)")
    for column in ("confidence bin", "items", "mean confidence", "accuracy", "gap"):
        add_column(bins_table, column, justify="right")
    for b in overall.bins:
        gap = f"{b.accuracy - b.confidence:+.3f}" if b.count else "-"
        bins_table.add_row(
            f"{b.low:.1f}–{b.high:.1f}",
            str(b.count),
            f"{b.confidence:.3f}" if b.count else "-",
            f"{b.accuracy:.3f}" if b.count else "-",
            gap,
        )
    out.print(bins_table)
    out.print(f"ECE {overall.ece:.4f}  accuracy {overall.accuracy:.3f}")

    per = table(title="ECE per slice")
    for column in ("slice", "value", "items", "accuracy", "ECE"):
        add_column(
            per, column, justify="right" if column in ("items", "accuracy", "ECE") else "left"
        )
    summary: dict[str, dict[str, float]] = {}
    for kind, value, members in slices(items):
        result = reliability(members, bins)
        per.add_row(kind, value, str(result.count), f"{result.accuracy:.3f}", f"{result.ece:.4f}")
        summary[f"{kind}:{value}"] = {"items": result.count, "ece": round(result.ece, 4)}
    out.print(per)
    line = {"items": overall.count, "left_out": len(problems), "ece": round(overall.ece, 4)}
    out.print_json(orjson.dumps({**line, "slices": summary}).decode())
