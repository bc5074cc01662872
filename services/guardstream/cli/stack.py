"""`guardstream stack …`: the local development stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardstream.cli.common import err, out
from guardstream.devtools.stack import StackConfig, StackError, down, up

app = typer.Typer(no_args_is_help=True, help="The local development stack.")

RunDir = Annotated[Path, typer.Option(help="Where pid files and logs go.")]


@app.command("up")
def stack_up(
    run_dir: RunDir = Path(".run"),
    kafka_port: Annotated[int, typer.Option()] = 9092,
    health_port_base: Annotated[int, typer.Option()] = 18081,
    metrics_port_base: Annotated[
        int, typer.Option(help="Serve /metrics from this port on, one per process; 0 = off.")
    ] = 0,
) -> None:
    """Start broker (unless KAFKA_BOOTSTRAP is set), topics, triage and scorer; wait until ready."""

    try:
        up(StackConfig(run_dir, kafka_port, health_port_base, metrics_port_base), out.print)
    except StackError as exc:
        err.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print("[green]guardstream is up[/green]")


@app.command("down")
def stack_down(run_dir: RunDir = Path(".run")) -> None:
    """Stop the processes and the local broker started by `stack up`."""

    down(StackConfig(run_dir), out.print)
