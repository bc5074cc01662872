"""What every command shares: the consoles, the settings (exit 2 with the reason when they are
invalid) and running a long-lived process: telemetry, stop signals, exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import typer
from pydantic import ValidationError
from rich.console import Console

from guardstream.model.guard import ModelUnavailable
from guardstream.policy import PolicyConflictError, PolicyLoadError
from guardstream.runtime import logs, telemetry
from guardstream.runtime.process import install_stop_signals
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import EngineDead

out = Console()
err = Console(stderr=True)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from None


def run_process(
    name: str,
    run: Callable[[Settings, asyncio.Event], Awaitable[object]],
    *,
    start_errors: tuple[type[Exception], ...] = (),
    event_loop: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run one process until SIGTERM/SIGINT with its telemetry; exit codes: 2 invalid
    configuration or policy packs, 3 cannot start (model, `start_errors`), 4 engine died.
    `event_loop`: the loop's factory (default: the stdlib's; the API runs on uvloop)."""
    settings = load_settings()
    logs.configure(settings.process.log_level)
    cannot_start: tuple[type[Exception], ...] = (ModelUnavailable, *start_errors)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(settings, stop)

    try:
        handle = telemetry.setup(settings, name)
    except telemetry.TelemetryError as exc:
        err.print(f"[red]{name} cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        with asyncio.Runner(loop_factory=event_loop) as runner:
            runner.run(main())
    except cannot_start as exc:
        err.print(f"[red]{name} cannot start:[/red] {exc}")
        raise typer.Exit(3) from None
    except EngineDead as exc:
        err.print(f"[red]{name} stopped: the model engine died[/red] ({exc}); restart it")
        raise typer.Exit(4) from None
    except (PolicyLoadError, PolicyConflictError) as exc:
        err.print(f"[red]{name} cannot start: invalid policy packs[/red]\n{exc}")
        raise typer.Exit(2) from None
    finally:
        handle.shutdown()
