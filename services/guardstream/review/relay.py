"""Sends what review transactions committed to the outbox: events to Kafka, human verdicts to
the verdict cache.

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

from guardstream.contracts.events import utcnow
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.review import metrics as review_metrics
from guardstream.review.store import ReviewStore
from guardstream.runtime.redisstore import Unavailable
from guardstream.verdict.archive import Archive
from guardstream.verdict.cache import CachedVerdict

log = logging.getLogger(__name__)


# An event continues the trace of the contested decision its post's task came from (events
# are keyed by post_id; of several tasks of one post, the newest).
_UNSENT = (
    "SELECT id, kind, topic, key, payload, (SELECT t.traceparent FROM tasks t"
    " WHERE t.post_id = outbox.key AND t.traceparent IS NOT NULL"
    " ORDER BY t.created_at DESC LIMIT 1) AS traceparent"
    " FROM outbox WHERE sent_at IS NULL AND kind = $1"
    " ORDER BY id LIMIT $2 FOR UPDATE OF outbox SKIP LOCKED"
)


class HumanVerdictSink(Protocol):
    async def put_human(self, key: str, entry: CachedVerdict) -> None: ...

    async def human_verdicts_present(self) -> bool: ...

    async def mark_human_verdicts_present(self) -> None: ...


# The latest human verdict per (tenant, content key) still within its lifetime: what Redis
# must hold (the key is `verdict.cache.human_verdict_key`).
_HUMAN_VERDICTS = (
    "SELECT DISTINCT ON (key) key, payload FROM outbox WHERE kind = 'human_verdict'"
    " AND created_at > $1 ORDER BY key, id DESC"
)


class OutboxRelay:
    def __init__(
        self,
        store: ReviewStore,
        producer: AIOKafkaProducer,
        cache: HumanVerdictSink,
        topics: TopicNames,
        *,
        archive: Archive | None = None,
        human_ttl_s: int = 90 * 24 * 3600,
        batch: int = 200,
    ) -> None:
        self._human_ttl_s = human_ttl_s
        self._store = store
        self._archive = archive
        self._producer = producer
        self._cache = cache
        self._topics = topics
        self._batch = batch
        self._lock = asyncio.Lock()
        self._kicked = asyncio.Event()
        self.sent = 0

    def kick(self) -> None:
        """Something was committed to the outbox: send it soon (requests never wait for it)."""
        self._kicked.set()

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Send whenever kicked, and every `interval_s` anyway (retries after an outage)."""
        while not stop.is_set():
            kicked = asyncio.create_task(self._kicked.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {kicked, stopped}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            kicked.cancel()
            stopped.cancel()
            self._kicked.clear()
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
            async with self._store.transaction() as tx:
                rows = await tx.conn.fetch(_HUMAN_VERDICTS, since)
            for row in rows:
                entry = CachedVerdict.model_validate_json(bytes(row["payload"]))
                await self._cache.put_human(row["key"], entry)
            await self._cache.mark_human_verdicts_present()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis or the database down: next round
            log.warning("human verdict restore failed", extra={"error": type(exc).__name__})
            return 0
        if rows:
            log.info("human verdicts restored to the cache", extra={"count": len(rows)})
        return len(rows)

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
            # Events and cache writes are taken apart: cache rows stuck while Redis is down
            # never stand in front of events.
            rows = [
                *await tx.conn.fetch(_UNSENT, "event", self._batch),
                *await tx.conn.fetch(_UNSENT, "human_verdict", self._batch),
            ]
            samples = (
                await tx.conn.fetch(_UNSENT, "feedback_sample", self._batch)
                if self._archive is not None
                else []
            )
            rows += samples
            if not rows:
                return 0
            futures: list[asyncio.Future[Any]] = []
            done: list[int] = []
            for row in rows:
                if row["kind"] == "event":
                    futures.append(
                        await self._producer.send(
                            self._topics[Topic(row["topic"])],
                            bytes(row["payload"]),
                            key=row["key"].encode(),
                            headers=_headers(row["traceparent"]),
                        )
                    )
                    done.append(row["id"])
            await asyncio.gather(*futures)
            # Archive and cache writes apart: an archive or Redis outage must not hold back (or
            # re-send) events; what failed stays queued on its own.
            if samples:
                done.extend(await self._archived(samples))
            for row in rows:
                if row["kind"] == "human_verdict":
                    entry = CachedVerdict.model_validate_json(bytes(row["payload"]))
                    try:
                        await self._cache.put_human(row["key"], entry)
                    except Unavailable:
                        continue
                    done.append(row["id"])
            await tx.conn.execute(
                "UPDATE outbox SET sent_at = $2 WHERE id = ANY($1::bigint[])", done, utcnow()
            )
        self.sent += len(done)
        return len(done)

    async def _archived(self, samples: list[Any]) -> list[int]:
        """Append the feedback samples of `samples` (outbox rows) to the archive, which fsyncs
        before returning; their ids, or none when the archive failed (they stay queued)."""
        if self._archive is None:
            return []
        try:
            archived = [FeedbackSample.from_json(bytes(row["payload"])) for row in samples]
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
        return [row["id"] for row in samples]

    async def drain(self) -> None:
        while await self.relay_once() >= self._batch:
            pass


def _headers(traceparent: str | None) -> list[tuple[str, bytes]] | None:
    return [("traceparent", traceparent.encode("latin-1"))] if traceparent else None
