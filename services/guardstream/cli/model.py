"""`guardstream model …`: model checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardstream.cli.common import load_settings, out
from guardstream.model.tiny import build_tiny_checkpoint, ensure_tiny_checkpoint
from guardstream.runtime import logs

app = typer.Typer(no_args_is_help=True, help="Model checkpoints.")


@app.command("build-tiny")
def build_tiny(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Directory to build into.")] = None,
) -> None:
    """Build (or reuse) the project's tiny offline Qwen3Guard-format test checkpoint."""

    logs.configure("INFO")
    settings = load_settings()
    path = (
        build_tiny_checkpoint(out_dir)
        if out_dir
        else ensure_tiny_checkpoint(settings.model.cache_dir)
    )
    out.print(str(path))
