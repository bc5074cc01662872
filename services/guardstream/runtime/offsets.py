"""Which offsets may be committed when work finishes out of order.

Records are started in fetch order per partition and may finish in any order (batches run
concurrently, a slow one can be overtaken). The committable offset of a partition is the
contiguous done watermark: the first offset still in flight, or one past the last started
offset when nothing is in flight. Committing anything beyond it could skip undecided records
after a crash (faust's gap-aware `_new_offset` does the same).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")  # a partition identifier (aiokafka's TopicPartition in production)


@dataclass
class _Partition:
    in_flight: deque[int] = field(default_factory=deque)  # started, in offset order
    done: set[int] = field(default_factory=set)  # finished but not yet at the left edge
    high: int | None = None  # one past the highest started offset
    committed: int | None = None  # last watermark handed out for commit


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}

    def start(self, partition: P, offsets: Iterable[int]) -> None:
        part = self._parts.setdefault(partition, _Partition())
        for offset in offsets:
            if part.high is not None and offset < part.high:
                raise ValueError(f"offset {offset} started out of order on {partition}")
            part.in_flight.append(offset)
            part.high = offset + 1

    def finish(self, partition: P, offsets: Iterable[int]) -> None:
        """Mark offsets done; unknown partitions (revoked meanwhile) are ignored."""
        part = self._parts.get(partition)
        if part is None:
            return
        part.done.update(offsets)
        while part.in_flight and part.in_flight[0] in part.done:
            part.done.discard(part.in_flight.popleft())

    def watermark(self, partition: P) -> int | None:
        part = self._parts.get(partition)
        if part is None or part.high is None:
            return None
        return part.in_flight[0] if part.in_flight else part.high

    def to_commit(self) -> dict[P, int]:
        """Watermarks that moved since the last call (and marks them handed out)."""
        out: dict[P, int] = {}
        for partition, part in self._parts.items():
            mark = self.watermark(partition)
            if mark is not None and mark != part.committed:
                out[partition] = mark
        return out

    def committed(self, offsets: dict[P, int]) -> None:
        for partition, offset in offsets.items():
            if partition in self._parts:
                self._parts[partition].committed = offset

    def in_flight(self, partition: P | None = None) -> int:
        parts = self._parts.values() if partition is None else [self._parts.get(partition)]
        return sum(len(p.in_flight) for p in parts if p is not None)

    def drop(self, partitions: Iterable[P]) -> None:
        """Forget partitions (revoked): their in-flight work will be redelivered elsewhere."""
        for partition in partitions:
            self._parts.pop(partition, None)

    def partitions(self) -> list[P]:
        return list(self._parts)
