"""How commands print: tables that fold long cells instead of cutting them, JSON Lines for
scripts, and progress bars that show only on a terminal.

A table cell is never cut with an ellipsis: an id or a topic name that is cut is an id or a
topic name a person cannot copy. Every listing command also takes `--json` (one object a line).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

from guardstream.cli.common import err, out


def table(*columns: str | Column, **kwargs: Any) -> Table:
    """A rich table whose cells wrap, and fold where a word is longer than its column."""
    folded = [
        Column(c, overflow="fold", no_wrap=False) if isinstance(c, str) else _folded_column(c)
        for c in columns
    ]
    return Table(*folded, **kwargs)


def add_column(target: Table, header: str, **kwargs: Any) -> None:
    """`Table.add_column`, folding instead of cutting."""
    target.add_column(header, overflow="fold", no_wrap=False, **kwargs)


def _folded_column(column: Column) -> Column:
    column.overflow = "fold"
    column.no_wrap = False
    return column


def json_lines(rows: Iterable[Mapping[str, Any]]) -> None:
    """Write each row as one JSON object on its own line of stdout (no colour, no wrapping)."""
    for row in rows:
        sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
    sys.stdout.flush()


def progress(*columns: ProgressColumn | str) -> Progress:
    """A progress display on stderr, shown only when stderr is a terminal and cleared when it
    ends. stdout is routed above it only when stdout is the terminal too, so output piped to a
    file never ends up on the terminal instead."""
    return Progress(
        *(columns or _default_columns()),
        console=err,
        transient=True,
        disable=not err.is_terminal,
        redirect_stdout=out.is_terminal,
    )


def _default_columns() -> tuple[ProgressColumn, ...]:
    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
