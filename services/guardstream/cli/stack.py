"""`guardstream stack …`: the local development stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape

from guardstream.cli.common import err, out

app = typer.Typer(no_args_is_help=True, help="The local development stack.")

RunDir = Annotated[Path, typer.Option(help="Where pid files and logs go.")]


@app.command("up")
def stack_up(
    run_dir: RunDir = Path(".run"),
    kafka_port: Annotated[int, typer.Option(help="The local broker's port.")] = 9092,
    health_port_base: Annotated[
        int, typer.Option(help="/readyz of triage, scorer and SLA timer from this port on.")
    ] = 18081,
    metrics_port_base: Annotated[
        int, typer.Option(help="Serve /metrics from this port on, one per process; 0 = off.")
    ] = 0,
    review_port: Annotated[int, typer.Option(help="The review console's port.")] = 8090,
    api_port: Annotated[int, typer.Option(help="The moderation API's port.")] = 8080,
    scorer_port: Annotated[
        int, typer.Option(help="The scorer's interactive door (the API calls it).")
    ] = 8095,
) -> None:
    """Start broker (unless KAFKA_BOOTSTRAP is set), topics, triage, scorer, SLA timer, review
    console and moderation API; wait until each is ready. The settings chosen go to the env
    file every guardstream command reads (.env here, or GUARDSTREAM_ENV_FILE); a local demo
    reviewer is created once and its credentials printed."""

    # lazy: the stack makes the demo reviewer through the review store (asyncpg, FastAPI's
    # stack), which the pipeline processes, run through this same command line, must not load
    from guardstream.devtools.stack import StackConfig, StackError, up

    config = StackConfig(
        run_dir,
        kafka_port,
        health_port_base,
        metrics_port_base,
        review_port,
        api_port=api_port,
        scorer_port=scorer_port,
    )
    try:
        report = up(config, out.print)
    except StackError as exc:
        err.print(f"[red]stack failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{escape(str(exc))}")
        raise typer.Exit(2) from None
    out.print("[green]guardstream is up[/green]")
    for line in report.lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("down")
def stack_down(run_dir: RunDir = Path(".run")) -> None:
    """Stop the processes and the local broker started by `stack up`."""
    # lazy: as in `stack up`
    from guardstream.devtools.stack import StackConfig, down

    down(StackConfig(run_dir), out.print)
