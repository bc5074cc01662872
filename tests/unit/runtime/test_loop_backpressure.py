"""The consumer runtime's backpressure and commits: over budget it pauses and resumes as soon as
a batch finishes rather than after a poll spent waiting on paused partitions; finished work is
committed at most once per commit interval, and whatever finished is committed at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from aiokafka import TopicPartition

from guardstream.runtime.loop import BatchLoop, LoopConfig

pytestmark = pytest.mark.unit

TOPIC = "posts.v1"


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    value: bytes = b"{}"
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeConsumer:
    """One partition's backlog, served `max_records` at a time unless paused."""

    def __init__(self, count: int) -> None:
        self.tp = TopicPartition(TOPIC, 0)
        self._backlog = [FakeRecord(TOPIC, 0, offset) for offset in range(count)]
        self._paused = False
        self.committed: dict[TopicPartition, int] = {}
        self.commits = 0
        self.waiting_polls_while_paused = 0

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def pause(self, *tps: TopicPartition) -> None:
        self._paused = True

    def resume(self, *tps: TopicPartition) -> None:
        self._paused = False

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[FakeRecord]]:
        if self._paused:
            if timeout_ms > 0:
                self.waiting_polls_while_paused += 1
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        if not self._backlog:
            await asyncio.sleep(0.01)  # drained: the test is about to stop the loop
            return {}
        batch, self._backlog = self._backlog[:max_records], self._backlog[max_records:]
        return {self.tp: batch}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)
        self.commits += 1


async def test_a_paused_loop_resumes_when_a_batch_finishes_without_waiting_in_a_poll() -> None:
    consumer = FakeConsumer(count=30)
    stop = asyncio.Event()
    handled: list[int] = []

    async def handler(records: Sequence[FakeRecord]) -> None:
        await asyncio.sleep(0.01)  # I/O: the other batch in flight runs meanwhile
        handled.extend(r.offset for r in records)
        if len(handled) == 30:
            stop.set()

    # Budget of two batches; a poll timeout far longer than the test may take.
    config = LoopConfig("triage", 5, 10, 60_000, 1.0, 5.0)
    loop = BatchLoop(consumer, handler, config)  # type: ignore[arg-type]
    report = await asyncio.wait_for(loop.run(stop), timeout=30)

    assert sorted(handled) == list(range(30))
    assert consumer.committed == {consumer.tp: 30}
    assert report.peak_in_flight <= 10
    assert consumer.waiting_polls_while_paused == 0


@pytest.mark.parametrize("interval_s", [0.0, 60.0])
async def test_finished_work_is_committed_at_most_once_per_interval_and_at_the_end(
    interval_s: float,
) -> None:
    """30 one-record batches: without an interval, a commit after (nearly) every round; with a
    long one, at most one at the start and one when the loop ends."""
    consumer = FakeConsumer(count=30)
    stop = asyncio.Event()
    handled: list[int] = []

    async def handler(records: Sequence[FakeRecord]) -> None:
        await asyncio.sleep(0.001)
        handled.extend(r.offset for r in records)
        if len(handled) == 30:
            stop.set()

    config = LoopConfig("triage", 1, 1, 50, 1.0, 5.0, commit_interval_s=interval_s)
    loop = BatchLoop(consumer, handler, config)  # type: ignore[arg-type]
    await asyncio.wait_for(loop.run(stop), timeout=30)

    assert consumer.committed == {consumer.tp: 30}  # all of it, whatever the interval
    assert (consumer.commits <= 2) == (interval_s > 0), consumer.commits
