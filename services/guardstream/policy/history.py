"""The pack registry directory's history: every version applied is kept, so a rollback is one
command (`guardstream policy apply / rollback / history`).

Layout, inside the directory the processes load (`GUARDSTREAM_POLICY_DIR`)::

    default.yaml, health-forum.yaml      the packs in force (what every process loads)
    .history/log.jsonl                   one line per change: seq, at, action, file, packs
    .history/000007-default.yaml         the whole file as it was written by change 7

The loader and the reloader's digest read only `*.yaml` / `*.yml` directly in the directory,
so `.history/` is never loaded. A change is checked as the processes would check it (the whole
directory with the new file in place must load, and a changed pack must carry a new version)
before anything is written; the file is then replaced whole (written beside it, renamed into
place), so a process polling at that moment sees the old file or the new one. Changes take
an exclusive lock on `.history/lock`. A file found in the directory that history does not hold
(written by hand, or before the first apply) is recorded as `found` before it is replaced, so
what was there can always be restored.

A rollback restores the whole file that holds the pack, as it was written by the chosen change:
packs sharing that file (a tenant's region overrides) go back with it, which is what one file
per change means.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from guardstream.contracts.errors import PermanentError
from guardstream.policy.loader import (
    MAX_PACK_FILE_BYTES,
    PolicyLoadError,
    load_packs,
    parse_pack_file,
)
from guardstream.policy.pack import PolicyPack
from guardstream.policy.registry import PolicyRegistry
from guardstream.policy.reloader import pack_files, unbumped

HISTORY: Final = ".history"
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class HistoryError(PermanentError, ValueError):
    """A change that cannot be made as asked (no such pack or version, bad file name,
    read-only directory); nothing was written. Not retriable: the request must change."""


@dataclass(frozen=True, slots=True)
class Change:
    """One line of `.history/log.jsonl`."""

    seq: int
    at: datetime
    action: str  # found | apply | rollback
    file: str
    packs: dict[str, str]  # pack id → version in the file as written
    note: str = ""

    @property
    def snapshot(self) -> str:
        return f"{self.seq:06d}-{self.file}"

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "seq": self.seq,
                "at": self.at.isoformat(),
                "action": self.action,
                "file": self.file,
                "packs": self.packs,
                "note": self.note,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Change:
        data: dict[str, Any] = orjson.loads(raw)
        _check_name(str(data["file"]))  # a snapshot path is built from it: never "../"
        return cls(
            int(data["seq"]),
            datetime.fromisoformat(data["at"]),
            str(data["action"]),
            str(data["file"]),
            {str(k): str(v) for k, v in dict(data["packs"]).items()},
            str(data.get("note", "")),
        )


class PackHistory:
    """Applies, rolls back and lists changes of one pack registry directory."""

    def __init__(
        self, directory: Path, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.directory = directory
        self.store = directory / HISTORY
        self._now = clock

    # --- reading --------------------------------------------------------------------------
    def changes(self, pack_id: str | None = None) -> list[Change]:
        """Every recorded change, oldest first (only those that touched `pack_id`, if given)."""
        log = self.store / "log.jsonl"
        if not log.exists():
            return []
        found = []
        for number, line in enumerate(log.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                found.append(Change.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:  # edited by hand, cut short
                # (HistoryError is a ValueError: a file name that is not one lands here too)
                raise HistoryError(
                    f"{log}:{number}: not a history line ({type(exc).__name__}); fix or remove "
                    "it (the snapshots beside it are intact)"
                ) from None
        return [c for c in found if pack_id is None or pack_id in c.packs]

    def text_of(self, change: Change) -> str:
        try:
            return (self.store / change.snapshot).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HistoryError(f"change {change.seq}: its snapshot is unreadable ({exc})") from None

    def _current(self) -> tuple[PolicyPack, ...]:
        """The packs the directory holds now; none when it does not load (a hand edit broke
        it: an apply or a rollback is then the way out, so it must not be refused for it)."""
        try:
            return load_packs(self.directory).packs
        except PolicyLoadError:
            return ()

    # --- changing -------------------------------------------------------------------------
    def apply(self, name: str, text: str, *, note: str = "") -> Change:
        """Put `text` in force as the directory's file `name`, after checking the whole set."""
        return self._write(name, text, "apply", note)

    def rollback(self, pack_id: str, to_version: str | None = None) -> Change:
        """Restore the file holding `pack_id` as written by the latest change that gave it
        `to_version` or, without one, a version other than the one in force now."""
        current = next((p.version for p in self._current() if p.id == pack_id), None)
        touched = self.changes(pack_id)
        for change in reversed(touched):
            version = change.packs[pack_id]
            if version == to_version if to_version is not None else version != current:
                note = f"{pack_id} back to {version} (change {change.seq})"
                return self._write(change.file, self.text_of(change), "rollback", note)
        if not touched:
            raise HistoryError(
                f"no history for pack {pack_id!r}: only what `guardstream policy apply` "
                "wrote can be rolled back"
            )
        if to_version is not None:
            raise HistoryError(f"pack {pack_id!r} was never applied at version {to_version!r}")
        raise HistoryError(f"pack {pack_id!r} has no earlier version than {current!r}")

    def _write(self, name: str, text: str, action: str, note: str) -> Change:
        _check_name(name)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise HistoryError(f"{name}: not valid UTF-8 text (a lone surrogate)") from None
        if size > MAX_PACK_FILE_BYTES:
            raise HistoryError(f"{name}: larger than {MAX_PACK_FILE_BYTES} bytes")
        packs, problems = parse_pack_file(name, text)
        if problems:
            raise PolicyLoadError(problems)
        if not self.directory.is_dir():
            raise HistoryError(f"{self.directory}: not a directory")
        with self._locked():
            before = self._current()
            _check_in_place(self.directory, name, text, before)
            target = self.directory / name
            changes = self.changes()
            seq = changes[-1].seq + 1 if changes else 1
            if target.exists():
                old = target.read_text(encoding="utf-8")
                recorded = [c for c in changes if c.file == name]
                if not recorded or self.text_of(recorded[-1]) != old:
                    old_packs, _ = parse_pack_file(name, old)
                    found = Change(
                        seq, self._now(), "found", name, {p.id: p.version for _, p in old_packs}
                    )
                    self._record(found, old)
                    seq += 1
            change = Change(
                seq, self._now(), action, name, {p.id: p.version for _, p in packs}, note
            )
            self._record(change, text)
            _replace(target, text)
            return change

    def _record(self, change: Change, text: str) -> None:
        _replace(self.store / change.snapshot, text)
        with (self.store / "log.jsonl").open("ab") as log:
            log.write(change.to_json() + b"\n")
            log.flush()
            os.fsync(log.fileno())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.store.mkdir(exist_ok=True)
            lock = (self.store / "lock").open("a")
        except OSError as exc:
            raise HistoryError(
                f"{self.directory} cannot be written ({exc.strerror}): a ConfigMap mount is "
                "read-only, change the ConfigMap instead (kubectl apply, helm rollback)"
            ) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _check_name(name: str) -> None:
    if (
        not name
        or name.startswith(".")
        or not set(name) <= _NAME_OK
        or not name.endswith((".yaml", ".yml"))
        or len(name) > 120
    ):
        raise HistoryError(
            f"{name!r}: a pack file name is letters, digits, '.', '_' and '-', ends in .yaml or "
            ".yml and does not start with '.'"
        )


def _check_in_place(directory: Path, name: str, text: str, before: Sequence[PolicyPack]) -> None:
    """The directory with `text` as `name` loads as the processes would load it."""
    after = with_file(directory, name, text)
    problems = unbumped(before, after.packs)
    if problems:
        raise PolicyLoadError(problems)


def with_file(directory: Path, name: str, text: str) -> PolicyRegistry:
    """The registry `directory` would load with `text` as its file `name` (nothing written
    there: the set is loaded from a scratch copy). Raises `PolicyLoadError`."""
    with tempfile.TemporaryDirectory(prefix="packs-") as scratch:
        trial = Path(scratch)
        for path in pack_files(directory):
            if path.name != name:
                shutil.copyfile(path, trial / path.name)
        (trial / name).write_text(text, encoding="utf-8")
        return load_packs(trial)


def _replace(target: Path, text: str) -> None:
    """Write `target` whole: beside it under a name no loader reads, then renamed into place."""
    spare = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with spare.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(spare, target)
