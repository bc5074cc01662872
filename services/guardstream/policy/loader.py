"""Reading policy packs from a directory of YAML files at start-up.

Every `*.yaml` / `*.yml` file directly in the directory holds one pack, or several separated
by `---` (a tenant's pack and its region overrides side by side). All problems in all files
are collected and raised together as one `PolicyLoadError` whose lines say file, field path,
message and the line in the file (from the YAML node marks), so a bad deploy is fixed in one
round and nobody reads a traceback. Duplicate keys in a YAML mapping are errors: YAML would
silently keep the last one. `policy.lint` runs the same checks on files without loading them.
"""

from __future__ import annotations

import difflib
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml  # type: ignore[import-untyped]
from pydantic import ValidationError

from guardstream.contracts.errors import PermanentError
from guardstream.policy.experiment import Experiment
from guardstream.policy.pack import PolicyPack, ReviewBelow
from guardstream.policy.registry import PolicyRegistry, find_clashes
from guardstream.policy.rules import ConfidenceBand, Rule, RuleProblems

MAX_PACK_FILE_BYTES: Final = 1 << 20  # a pack file is a page of YAML; a megabyte is a mistake
# Deeper than any pack needs; it bounds the YAML composer's recursion (a `[[[[…` file would
# otherwise end in a RecursionError instead of a refusal naming its line).
MAX_PACK_DEPTH: Final = 32

_FIELDS = [
    *PolicyPack.model_fields,
    *ReviewBelow.model_fields,
    *Rule.model_fields,
    *ConfidenceBand.model_fields,
    *Experiment.model_fields,
]

_EXPERIMENT_FIELDS = frozenset(("experiment.candidate", "candidate"))


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a pack file was refused. `source` is a file (and document) name."""

    source: str
    field: str
    message: str
    line: int | None = None  # 1-based, in the file (not the document)

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        at = f" (line {self.line})" if self.line is not None else ""
        return f"{where}: {self.message}{at}"


class PolicyLoadError(PermanentError, ValueError):
    """The policy directory cannot be used; nothing was loaded. Not retriable: fix the files."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in policy packs:\n{lines}")


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses a key given twice in one mapping, and nesting deeper than
    `MAX_PACK_DEPTH` (at the line where it goes too deep)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_PACK_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_PACK_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key if isinstance(key, str) else id(key_node))
        return super().construct_mapping(node, deep=deep)


def load_packs(directory: Path) -> PolicyRegistry:
    """Every pack file in `directory`, validated and cross-checked, as a registry."""
    if not directory.is_dir():
        raise PolicyLoadError([Problem(str(directory), "", "not a directory")])
    files = sorted({*directory.glob("*.yaml"), *directory.glob("*.yml")})
    problems: list[Problem] = []
    loaded: list[tuple[str, PolicyPack, Any]] = []
    for path in files:
        shown = path.name.encode("utf-8", "backslashreplace").decode("utf-8")
        text, unreadable = read_pack_text(path)
        if unreadable is not None:
            problems.append(unreadable)
            continue
        packs, file_problems = _parse(shown, text)
        loaded.extend(packs)
        problems.extend(file_problems)
    if problems:  # cross-pack checks on a partial set would only add noise
        raise PolicyLoadError(problems)

    sources: dict[str, list[str]] = {}
    nodes: dict[str, Any] = {}
    for source, pack, node in loaded:
        sources.setdefault(pack.id, []).append(source)
        nodes.setdefault(pack.id, node)
    clashes = find_clashes([pack for _, pack, _ in loaded])
    if clashes:
        raise PolicyLoadError(
            [
                Problem(
                    ", ".join(s for pid in c.pack_ids for s in sources.get(pid, []))
                    or str(directory),
                    c.field,
                    c.message
                    + (f" (packs {', '.join(map(repr, c.pack_ids))})" if c.pack_ids else ""),
                    # An experiment's problem is a field of the first pack named: its line.
                    line_of(nodes[c.pack_ids[0]], c.field.split("."))
                    if c.pack_ids and c.field in _EXPERIMENT_FIELDS
                    else None,
                )
                for c in clashes
            ]
        )
    return PolicyRegistry(pack for _, pack, _ in loaded)


def read_pack_text(path: Path) -> tuple[str, Problem | None]:
    """A pack file's text, or why it is none: not a regular file (a directory, a FIFO or a
    device is refused before it is opened, so nothing blocks or reads without end), larger
    than `MAX_PACK_FILE_BYTES`, or not UTF-8 (the problem names the line)."""
    # A name that is not UTF-8 (surrogate-escaped bytes) is shown escaped: printing it whole
    # would fail on a UTF-8 terminal.
    name = (path.name or str(path)).encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return "", Problem(name, "", "not a regular file")
        with path.open("rb") as file:
            body = file.read(MAX_PACK_FILE_BYTES + 1)
    except OSError as exc:
        return "", Problem(name, "", f"cannot be read ({exc.strerror or type(exc).__name__})")
    if len(body) > MAX_PACK_FILE_BYTES:
        return "", Problem(name, "", f"larger than {MAX_PACK_FILE_BYTES} bytes")
    try:
        return body.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        return "", Problem(name, "", f"not UTF-8 text (byte {exc.start})", line)


def parse_pack_file(name: str, text: str) -> tuple[list[tuple[str, PolicyPack]], list[Problem]]:
    """The packs in one file's text, each with the source name errors will use."""
    packs, problems = _parse(name, text)
    return [(source, pack) for source, pack, _ in packs], problems


def _parse(name: str, text: str) -> tuple[list[tuple[str, PolicyPack, Any]], list[Problem]]:
    """`parse_pack_file`, each pack with its YAML node (for cross-pack problems' lines)."""
    try:
        # Numbered before empty documents (a trailing `---`) are dropped, as an editor counts.
        documents = [
            (number, node, document)
            for number, (node, document) in enumerate(_documents(text), 1)
            if document is not None
        ]
    except yaml.YAMLError as exc:
        return [], [Problem(name, "", _yaml_message(exc))]
    if not documents:
        return [], [Problem(name, "", "holds no policy pack")]

    packs: list[tuple[str, PolicyPack, Any]] = []
    problems: list[Problem] = []
    for number, node, document in documents:
        source = name if len(documents) == 1 else f"{name} (document {number})"
        if not isinstance(document, dict):
            kind = type(document).__name__
            problems.append(
                Problem(
                    source,
                    "",
                    f"must be a mapping of pack fields, not {kind}",
                    node.start_mark.line + 1,
                )
            )
            continue
        try:
            packs.append((source, PolicyPack.model_validate(document), node))
        except ValidationError as exc:
            problems.extend(_validation_problems(source, exc, node))
    return packs, problems


def _documents(text: str) -> Any:
    """Each YAML document's node (for line numbers) and its value."""
    loader = _UniqueKeyLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node, loader.construct_document(node)
    finally:
        loader.dispose()


def line_of(node: Any, path: Sequence[str | int]) -> int | None:
    """The 1-based line of the value at `path` in a document's node tree: the deepest part
    of the path the file has (a missing field points at its mapping, an unknown one at its
    key)."""
    line: int = node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    # A field refused as unknown, or a scalar, is best shown at its key.
                    line = int(key.start_mark.line) + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = int(node.start_mark.line) + 1
        else:
            return line
    return line


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(exc, "problem", None) or str(exc)
    return f"invalid YAML at {where}{what}" if where else f"invalid YAML: {what}"


def _validation_problems(source: str, exc: ValidationError, node: Any = None) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, RuleProblems):  # the pack's rules: one line per problem
            problems.extend(
                Problem(
                    source,
                    ".".join(map(str, p.path)),
                    p.message,
                    line_of(node, p.path) if node is not None else None,
                )
                for p in cause.problems
            )
            continue
        loc = [part for part in err["loc"] if not _is_union_tag(part)]
        path = ".".join(str(part) for part in loc) or "<pack>"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), _FIELDS, n=1)
            message = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif isinstance(err.get("input"), bool) and err["type"].endswith("_type"):
            message += " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
        elif isinstance(err.get("input"), int | float) and err["type"] == "string_type":
            message += " (quote it: YAML read a number)"
        problems.append(
            Problem(source, path, message, line_of(node, loc) if node is not None else None)
        )
    return problems


def _is_union_tag(part: object) -> bool:
    # pydantic names the branch of an optional field it tried ("rules.0.verdict.tuple[...]"):
    # not a part of the file's path.
    return isinstance(part, str) and ("[" in part or part in {"function-after", "none"})
