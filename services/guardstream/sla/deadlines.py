"""Which SLA items are due when, per owned partition: one `DeadlineIndex` for each partition
of the review topic this worker owns, and the decision times of its pending items (the
`pending` and `oldest_pending_age` gauges). Rebuilt from the table when partitions are
assigned; dropped when they are revoked."""

from __future__ import annotations

from guardstream.sla.logic import DeadlineIndex, Item, Phase


class Deadlines:
    def __init__(self) -> None:
        self._indexes: dict[int, DeadlineIndex] = {}
        self._pending: dict[int, dict[str, float]] = {}  # partition → item key → decided_at

    @property
    def partitions(self) -> list[int]:
        return sorted(self._indexes)

    def index(self, partition: int) -> DeadlineIndex | None:
        return self._indexes.get(partition)

    def own(self, owned: set[int]) -> set[int]:
        """Keep exactly the `owned` partitions; the new ones (returned) start empty, to be
        filled from the table."""
        for partition in set(self._indexes) - owned:
            self.drop(partition)
        fresh = owned - set(self._indexes)
        for partition in fresh:
            self._indexes[partition] = DeadlineIndex()
            self._pending[partition] = {}
        return fresh

    def drop(self, partition: int) -> None:
        self._indexes.pop(partition, None)
        self._pending.pop(partition, None)

    def track(self, item: Item, retain: float) -> None:
        """Schedule `item`'s next due time; a partition not (yet) owned is indexed from the
        table by recovery once it is assigned."""
        index = self._indexes.get(item.partition)
        if index is None:
            return
        index.schedule(item.key, item.next_due(retain))
        pending = self._pending.setdefault(item.partition, {})
        if item.phase is Phase.PENDING:
            pending[item.key] = item.decided_at
        else:
            pending.pop(item.key, None)

    def discard(self, partition: int, key: str) -> None:
        index = self._indexes.get(partition)
        if index is not None:
            index.discard(key)

    def pending_count(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def oldest_pending_age(self, now: float) -> float | None:
        starts = [min(p.values()) for p in self._pending.values() if p]
        return max(0.0, now - min(starts)) if starts else None
