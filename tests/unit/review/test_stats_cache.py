"""The queue figures a reviewer sees: never older than their age bound, never from before the
reviewer's own decision, one count for many readers (issue 19: "4 with 3 rows" right after a
decision; "3 for 853 tasks" on the first read after an idle period)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from guardstream.review.services.queue import StatsCache
from guardstream.review.store.tasks import QueueStats

pytestmark = pytest.mark.unit

TENANTS = ("acme",)


class Depth:
    """The store's count: the open tasks as they are now; `gate` holds a count half-way."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.counts = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, tenants: Sequence[str]) -> QueueStats:
        self.counts += 1
        self.started.set()
        seen = self.depth  # what the database's snapshot holds when the count starts
        if self.gate is not None:
            await self.gate.wait()
        return QueueStats(seen, 0, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_after_a_decision_its_reviewer_reads_figures_that_count_it() -> None:
    store, clock = Depth(4), Clock()
    figures = StatsCache(store, max_age_s=1.0, clock=clock)
    assert (await figures.get(TENANTS, "alice")).depth == 4
    assert (await figures.get(TENANTS, "bob")).depth == 4
    store.depth = 3  # alice's decision commits ...
    figures.stale("alice")  # ... and says so
    assert (await figures.get(TENANTS, "alice")).depth == 3  # not the 4 from before it
    assert store.counts == 2
    assert (await figures.get(TENANTS, "alice")).depth == 3  # owed once: now a shared copy
    assert (await figures.get(TENANTS, "bob")).depth == 3  # the newer copy is everyone's
    assert store.counts == 2


async def test_a_decision_costs_other_readers_no_count_within_the_age() -> None:
    store, clock = Depth(4), Clock()
    figures = StatsCache(store, max_age_s=1.0, clock=clock)
    assert (await figures.get(TENANTS, "bob")).depth == 4
    store.depth = 3
    figures.stale("alice")
    assert (await figures.get(TENANTS, "bob")).depth == 4  # at most max_age_s old
    assert store.counts == 1
    clock.now += 1.0
    assert (await figures.get(TENANTS, "bob")).depth == 3


async def test_a_copy_past_its_age_is_never_shown() -> None:
    store, clock = Depth(3), Clock()
    figures = StatsCache(store, max_age_s=1.0, clock=clock)
    assert (await figures.get(TENANTS)).depth == 3
    store.depth = 853  # the consumer filled the queue while nobody looked
    clock.now += 0.5
    assert (await figures.get(TENANTS)).depth == 3  # within its age: the shared copy
    assert store.counts == 1
    clock.now += 3600  # an idle hour
    assert (await figures.get(TENANTS)).depth == 853


async def test_readers_without_a_copy_share_one_count() -> None:
    store, clock = Depth(7), Clock()
    store.gate = asyncio.Event()
    figures = StatsCache(store, max_age_s=1.0, clock=clock)
    readers = [asyncio.ensure_future(figures.get(TENANTS)) for _ in range(20)]
    await store.started.wait()
    store.gate.set()
    assert [r.depth for r in await asyncio.gather(*readers)] == [7] * 20
    assert store.counts == 1


async def test_a_count_begun_before_a_decision_is_not_reused_after_it() -> None:
    store, clock = Depth(4), Clock()
    store.gate = asyncio.Event()
    figures = StatsCache(store, max_age_s=1.0, clock=clock)
    early = asyncio.ensure_future(figures.get(TENANTS, "bob"))
    await store.started.wait()
    store.depth = 3
    figures.stale("alice")
    late = asyncio.ensure_future(figures.get(TENANTS, "alice"))
    store.gate.set()
    assert (await early).depth == 4  # it asked before the decision
    assert (await late).depth == 3
    assert store.counts == 2
    store.gate = None
    assert (await figures.get(TENANTS, "bob")).depth == 3  # the older count is not the copy
    assert store.counts == 2


async def test_a_failed_count_is_not_kept_and_the_next_read_counts_again() -> None:
    clock = Clock()
    calls = 0

    async def flaky(tenants: Sequence[str]) -> QueueStats:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return QueueStats(5, 0, None)

    figures = StatsCache(flaky, max_age_s=1.0, clock=clock)
    with pytest.raises(ConnectionError):
        await figures.get(TENANTS)
    assert (await figures.get(TENANTS)).depth == 5


async def test_a_count_finishing_late_never_replaces_a_copy_counted_after_it() -> None:
    clock = Clock()
    gates: list[asyncio.Event] = []
    asked = asyncio.Event()

    async def count(tenants: Sequence[str]) -> QueueStats:
        depth = 4 if not gates else 3  # the first count began before the decision
        gate = asyncio.Event()
        gates.append(gate)
        asked.set()
        await gate.wait()
        return QueueStats(depth, 0, None)

    figures = StatsCache(count, max_age_s=1.0, clock=clock)
    early = asyncio.ensure_future(figures.get(TENANTS, "bob"))
    await asked.wait()
    figures.stale("alice")
    asked.clear()
    late = asyncio.ensure_future(figures.get(TENANTS, "alice"))
    await asked.wait()
    gates[1].set()  # the later count finishes first ...
    assert (await late).depth == 3
    gates[0].set()  # ... the earlier one after it
    assert (await early).depth == 4
    assert (await figures.get(TENANTS, "bob")).depth == 3
    assert len(gates) == 2
