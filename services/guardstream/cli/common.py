"""What every command shares: the consoles, the settings (exit 2 with the reason when they are
invalid) and running a long-lived process: telemetry, stop signals, exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape

from guardstream.contracts.events import Tenant
from guardstream.model.guard import ModelUnavailable
from guardstream.policy import PolicyConflictError, PolicyLoadError
from guardstream.runtime import logs, telemetry
from guardstream.runtime.process import install_stop_signals
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import EngineDead

out = Console()
err = Console(stderr=True)


_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)


def tenant_option(value: str | None) -> str | None:
    """A `--tenant` option's callback: a value that is no tenant name is a usage error (exit
    2 naming the option) rather than a filter that silently matches nothing."""
    if value is None:
        return None
    try:
        return _TENANT.validate_python(value)
    except ValidationError:
        raise typer.BadParameter(
            "not a tenant name (1-63 of a-z, 0-9, '_' and '-', starting alphanumeric)"
        ) from None


def shown(value: object) -> str:
    """`value` as one printable line: control characters and lone surrogates (an argument
    that was not UTF-8) escaped, so a hostile name neither garbles the terminal nor fails
    the write."""
    text = str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def write_output(path: Path, text: str, option: str) -> None:
    """Write a report where `option` says; a place that cannot be written is exit 2."""
    try:
        path.write_text(text, encoding="utf-8")
    except (OSError, UnicodeEncodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a UTF-8 file name"
        err.print(f"[red]{option}: cannot write {escape(shown(path))}:[/red] {escape(str(why))}")
        raise typer.Exit(2) from None


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
