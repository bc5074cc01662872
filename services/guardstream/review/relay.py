"""Sends what review transactions committed to the outbox (`store.outbox`, one payload model
per kind): events to Kafka, human verdicts to the verdict cache, feedback samples to the
archive. The SQL is the outbox store's; this module only delivers.

At-least-once: an item is marked sent only after the broker acknowledged it (or Redis stored
it, or the feedback archive fsynced it); a failure leaves that item for the next round and
marks the others sent (an archive or Redis outage never makes events go out again). Items
carry deterministic ids, so a re-send is a harmless, recognisable replay. Rows are taken
`FOR UPDATE SKIP LOCKED`, so several console replicas never send the same row at once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from guardstream.contracts.events import ContractError, Review, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.review import metrics as review_metrics
from guardstream.review.store import ReviewStore
from guardstream.review.store.outbox import (
    EventPayload,
    FeedbackSamplePayload,
    HumanVerdictPayload,
    Queued,
)
from guardstream.runtime.redisstore import Unavailable
from guardstream.verdict.archive import Archive
from guardstream.verdict.author_history import AuthorHistoryStore
from guardstream.verdict.cache import CachedVerdict

log = logging.getLogger(__name__)


class HumanVerdictSink(Protocol):
    async def put_human(self, key: str, entry: CachedVerdict) -> None: ...

    async def human_verdicts_present(self) -> bool: ...

    async def mark_human_verdicts_present(self) -> None: ...


class OutboxRelay:
    def __init__(
        self,
        store: ReviewStore,
        producer: AIOKafkaProducer,
        cache: HumanVerdictSink,
        topics: TopicNames,
        *,
        archive: Archive | None = None,
        history: AuthorHistoryStore | None = None,
        human_ttl_s: int = 90 * 24 * 3600,
        batch: int = 200,
        queued: asyncio.Event | None = None,
    ) -> None:
        self._human_ttl_s = human_ttl_s
        self._history = history
        self._store = store
        self._archive = archive
        self._producer = producer
        self._cache = cache
        self._topics = topics
        self._batch = batch
        self._lock = asyncio.Lock()
        # Set by the review services after a commit that queued items: send them at once
        # (requests never wait for it).
        self._queued = queued if queued is not None else asyncio.Event()
        self.sent = 0

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Send whenever items were queued, and every `interval_s` anyway (retries after an
        outage)."""
        while not stop.is_set():
            queued = asyncio.create_task(self._queued.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {queued, stopped}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            queued.cancel()
            stopped.cancel()
            self._queued.clear()
            await self.drain()
            await self.restore_human_verdicts()

    async def restore_human_verdicts(self) -> int:
        """Human overrides are sticky even across a Redis flush: when the marker key is gone,
        every human verdict still within its lifetime is written again from this store.
        Returns how many were restored; a Redis or database outage is retried next round."""
        try:
            if await self._cache.human_verdicts_present():
                return 0
            since = utcnow() - timedelta(seconds=self._human_ttl_s)
            verdicts = await self._store.outbox.human_verdicts_since(since)
            for item in verdicts:
                await self._cache.put_human(item.key, item.verdict)
            await self._cache.mark_human_verdicts_present()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis or the database down: next round
            log.warning("human verdict restore failed", extra={"error": type(exc).__name__})
            return 0
        if verdicts:
            log.info("human verdicts restored to the cache", extra={"count": len(verdicts)})
        return len(verdicts)

    async def relay_once(self) -> int:
        """Send one batch of unsent items; returns how many were sent. Never raises for a
        broker, Redis or database outage (the items stay queued)."""
        async with self._lock:
            try:
                return await self._relay()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure leaves the rows for later
                log.warning("outbox relay failed; will retry", extra={"error": type(exc).__name__})
                return 0

    async def _relay(self) -> int:
        async with self._store.transaction() as tx:
            # Each kind is taken apart: cache rows stuck while Redis is down (samples while
            # the archive is) never stand in front of events.
            events = await tx.outbox.take(EventPayload, self._batch)
            verdicts = await tx.outbox.take(HumanVerdictPayload, self._batch)
            samples = (
                await tx.outbox.take(FeedbackSamplePayload, self._batch)
                if self._archive is not None
                else []
            )
            if not (events or verdicts or samples):
                return 0
            futures: list[asyncio.Future[Any]] = []
            for item in events:
                futures.append(
                    await self._producer.send(
                        self._topics[item.payload.topic],
                        item.payload.event,
                        key=item.payload.key.encode(),
                        headers=_headers(item.traceparent),
                    )
                )
            await asyncio.gather(*futures)
            done = [item.id for item in events]
            await self._remember_reviews([item.payload for item in events])
            # Archive and cache writes apart: an archive or Redis outage must not hold back (or
            # re-send) events; what failed stays queued on its own.
            if samples:
                done.extend(await self._archived(samples))
            for verdict in verdicts:
                try:
                    await self._cache.put_human(verdict.payload.key, verdict.payload.verdict)
                except Unavailable:
                    continue
                done.append(verdict.id)
            await tx.outbox.mark_sent(done, utcnow())
        self.sent += len(done)
        return len(done)

    async def _archived(self, samples: list[Queued[FeedbackSamplePayload]]) -> list[int]:
        """Append `samples` to the archive, which fsyncs before returning; their ids, or none
        when the archive failed (they stay queued)."""
        if self._archive is None:
            return []
        archived = [item.payload.sample for item in samples]
        try:
            await asyncio.to_thread(self._archive.append, archived)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the archive unwritable: retried next round
            log.warning(
                "feedback archive failed; samples stay queued", extra={"error": type(exc).__name__}
            )
            return []
        for sample in archived:
            review_metrics.feedback_samples.add(1, {"tenant": sample.tenant})
        return [item.id for item in samples]

    async def _remember_reviews(self, events: list[EventPayload]) -> None:
        """People's verdicts into the authors' history (pack rules read "confirmed unsafe").
        After the broker has them; a replay is harmless (counted once per decision), and an
        outage loses the update, never the event."""
        if self._history is None:
            return
        for event in events:
            if event.topic is not Topic.REVIEWS:
                continue
            try:
                review = Review.from_json(event.event)
            except ContractError:
                continue  # not ours to judge here: the event went out as the service made it
            await self._history.record_review(
                review.tenant, review.decision_id, review.verdict, review.reviewed_at
            )

    async def drain(self) -> None:
        while await self.relay_once() >= self._batch:
            pass


def _headers(traceparent: str | None) -> list[tuple[str, bytes]] | None:
    return [("traceparent", traceparent.encode("latin-1"))] if traceparent else None
