"""Checking pack files without serving them: what `guardstream policy lint` reports.

The same checks as loading (`policy.loader`): unknown fields, categories and actions, rules
that can never fire, and, for a directory, what stops its packs from forming a registry (two
packs claiming one tenant, no default). Each problem names the file, the field path and the
line. Nothing is loaded or changed; an empty list means the files would load.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from guardstream.policy.loader import (
    PolicyLoadError,
    Problem,
    load_packs,
    parse_pack_file,
    read_pack_text,
)


def lint_text(name: str, text: str) -> list[Problem]:
    """The problems of one pack file's text (`name` is what the problems call it)."""
    return parse_pack_file(name, text)[1]


def lint_file(path: Path) -> list[Problem]:
    """The problems of one pack file on its own (no cross-pack checks)."""
    text, unreadable = read_pack_text(path)
    if unreadable is not None:
        return [unreadable]
    return lint_text(path.name, text)


def lint(paths: Iterable[Path]) -> list[Problem]:
    """The problems of each path: a file on its own, a directory as the processes would load
    it (every pack file in it, then the cross-pack checks)."""
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            try:
                load_packs(path)
            except PolicyLoadError as exc:
                problems.extend(exc.problems)
        elif path.is_file():
            problems.extend(lint_file(path))
        else:
            problems.append(Problem(str(path), "", "no such file or directory"))
    return problems
