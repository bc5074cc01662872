"""The review archive: one JSONL line per human review, under object-store-style dated paths.

Layout: `<root>/reviews/dt=YYYY-MM-DD/part-<writer>.jsonl` (UTC day of the review). Each
writer appends to its own part file and fsyncs every line before returning, so a crash loses
nothing acknowledged and several review replicas never interleave. A part file is written
under its `flock` (`locked_part`): erasure rewrites a file under the same lock and renames the
new one over it, and a writer that waited finds the new file, not the one renamed away.
Readers take every part of
the days they ask for and keep one sample per `sample_id` (a re-created archive may hold a
review twice); the archive can always be rebuilt from the review store.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import ContractError
from guardstream.contracts.feedback import FeedbackSample

_DAY_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_WRITER = re.compile(r"[^A-Za-z0-9_.-]")


def default_writer_id() -> str:
    return _WRITER.sub("-", f"{socket.gethostname()}-{os.getpid()}")


@contextmanager
def locked_part(path: Path, *, create: bool = False) -> Iterator[BinaryIO]:
    """`path` open for reading and writing under its exclusive `flock`; the file as it is after
    the lock was granted (one renamed over it meanwhile is opened again)."""
    while True:
        handle = path.open("a+b" if create else "r+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:
                handle.seek(0)
                yield handle
                return
        finally:
            handle.close()  # closing releases the lock


class ArchiveError(PermanentError, ValueError):
    """A line in the archive that is not a feedback sample: named, never skipped silently."""


class Archive:
    def __init__(self, root: Path, writer_id: str | None = None) -> None:
        self.root = root
        self.writer_id = _WRITER.sub("-", writer_id) if writer_id else default_writer_id()

    def day_dir(self, day: date) -> Path:
        return self.root / "reviews" / f"dt={day.isoformat()}"

    def append(self, samples: Iterable[FeedbackSample]) -> int:
        """Write samples durably (fsync before returning); returns how many were written."""
        by_day: dict[date, list[bytes]] = {}
        for sample in samples:
            day = sample.reviewed_at.astimezone(UTC).date()
            by_day.setdefault(day, []).append(sample.to_json() + b"\n")
        for day, lines in by_day.items():
            directory = self.day_dir(day)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"part-{self.writer_id}.jsonl"
            with locked_part(path, create=True) as out:
                out.seek(0, os.SEEK_END)
                out.write(b"".join(lines))
                out.flush()
                os.fsync(out.fileno())
        return sum(len(lines) for lines in by_day.values())

    def days(self) -> list[date]:
        base = self.root / "reviews"
        if not base.is_dir():
            return []
        found = (_DAY_DIR.match(p.name) for p in base.iterdir() if p.is_dir())
        return sorted(date.fromisoformat(m.group(1)) for m in found if m)

    def purge(self, before: date) -> int:
        """Delete the day directories older than `before` (retention); how many samples they
        held. Training reads only what is left, so the next cycle forgets them."""
        removed = 0
        for day in self.days():
            if day >= before:
                break
            directory = self.day_dir(day)
            for path in sorted(directory.glob("part-*.jsonl")):
                with locked_part(path) as handle:
                    removed += sum(1 for line in handle.read().splitlines() if line.strip())
                    path.unlink()
            shutil.rmtree(directory, ignore_errors=True)
        return removed

    def oldest_day(self) -> date | None:
        days = self.days()
        return days[0] if days else None

    def read(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[FeedbackSample]:
        """Samples reviewed in [since, until), one per sample_id, oldest first."""
        kept: dict[str, FeedbackSample] = {}
        for sample in self._scan(since, until):
            kept[sample.sample_id] = sample
        return sorted(kept.values(), key=lambda s: (s.reviewed_at, s.sample_id))

    def _scan(self, since: datetime | None, until: datetime | None) -> Iterator[FeedbackSample]:
        for day in self.days():
            if since is not None and day < since.astimezone(UTC).date():
                continue
            if until is not None and day > until.astimezone(UTC).date():
                continue
            for path in sorted(self.day_dir(day).glob("part-*.jsonl")):
                # A last line without its newline is a write that crashed before fsync
                # returned: it was never acknowledged, so it is not part of the archive.
                complete = path.read_bytes().rpartition(b"\n")[0]
                for number, line in enumerate(complete.splitlines(), start=1):
                    if not line.strip():
                        continue
                    try:
                        sample = FeedbackSample.from_json(line)
                    except ContractError as exc:
                        raise ArchiveError(f"{path}:{number}: {exc.reason}: {exc.detail}") from None
                    if since is not None and sample.reviewed_at < since:
                        continue
                    if until is not None and sample.reviewed_at >= until:
                        continue
                    yield sample
