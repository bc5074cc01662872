"""Is the scorer answering? Judged from Kafka alone, by what triage itself asked of it.

Triage remembers the offset and send time of the score requests it produced (one entry per
record batch, per partition) and polls the scorer group's committed offsets. A request is
answered once the scorer group has committed past it. The scorer is *unavailable* while one
of our requests has waited longer than `after_s` unanswered: the scorer process is down, its
group has no member for that partition, or every scoring attempt fails (it retries forever and
commits nothing, RELIABILITY.md scenario 8). A slow scorer working through a backlog still
commits, and stays available however long the backlog.

What triage does about it is the post's policy pack's call (`scorer_unavailable`, see
`Triage`); a watch that cannot read the offsets (broker trouble) changes nothing: it keeps its
last answer, and no answer at all is "available".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import client_kwargs
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)

# Partition → the scorer group's committed offset (the next request it will read; -1: none).
CommittedOffsets = Callable[[], Awaitable[Mapping[int, int]]]


class ScorerWatch(Protocol):
    def sent(self, partition: int, last_offset: int) -> None:
        """Score requests up to `last_offset` were produced to `partition` just now."""
        ...

    def unavailable(self) -> bool: ...

    def oldest_wait_s(self) -> float: ...


class CommitLagWatch:
    """`ScorerWatch` from the scorer group's committed offsets, read by `poll()`."""

    def __init__(
        self,
        committed: CommittedOffsets,
        *,
        after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._committed = committed
        self._after_s = after_s
        self._clock = clock
        # Per partition, (last offset, sent at) of each batch not yet known to be answered.
        self._waiting: dict[int, deque[tuple[int, float]]] = {}
        self._unavailable = False

    def sent(self, partition: int, last_offset: int) -> None:
        self._waiting.setdefault(partition, deque()).append((last_offset, self._clock()))

    def unavailable(self) -> bool:
        return self._unavailable

    def oldest_wait_s(self) -> float:
        """How long the oldest unanswered request has waited (0: none waiting)."""
        now = self._clock()
        return max((now - q[0][1] for q in self._waiting.values() if q), default=0.0)

    async def poll(self) -> None:
        committed = await self._committed()
        for partition, queue in self._waiting.items():
            done = committed.get(partition, -1)
            while queue and queue[0][0] < done:
                queue.popleft()
        was, self._unavailable = self._unavailable, self.oldest_wait_s() > self._after_s
        if self._unavailable != was:
            log.warning(
                "scorer unavailable: fail-closed packs send new misses to review"
                if self._unavailable
                else "scorer answering again",
                extra={"oldest_wait_s": round(self.oldest_wait_s(), 1)},
            )

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Poll until `stop`; a failed read keeps the last answer."""
        while not stop.is_set():
            try:
                await self.poll()
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("cannot read the scorer's offsets", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)


def scorer_offsets(settings: Settings, admin: AIOKafkaAdminClient) -> CommittedOffsets:
    """The scorer group's committed offsets on the score-request topic."""
    topic = TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]
    group = settings.group_id("scorer")
    partitions: list[TopicPartition] = []

    async def committed() -> dict[int, int]:
        if not partitions:
            described = await admin.describe_topics([topic])
            partitions.extend(
                TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]
            )
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
        return {tp.partition: meta.offset for tp, meta in offsets.items()}

    return committed


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_kwargs(settings), client_id="guardstream-triage-watch")
