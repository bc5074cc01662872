"""The SLA timer's transport: a faust-streaming app with one agent, one table and one timer.

The agent reads `actions.review`, `reviews` and `review-assignments` (6 partitions each, keyed
by post_id: co-partitioned) and keeps one `Item` per post in the `sla_items` table (keyed by
tenant and post_id, `logic.item_key`: tenants may share post ids), whose
changelog (`<group>-sla_items-changelog`, 6 partitions) restores it after a restart or a
rebalance. Each worker keeps a deadline index per partition it owns, rebuilt from the table
when recovery completes, so a tick pops only what is due. Faust commits an event's offset
once the agent has moved past it; what each outcome does (success, permanent and transient
errors, a bug, a failed timer publish, shutdown, rebalance) is in
docs/concepts/delivery.md, "The SLA app" (the one copy of the table).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from opentelemetry import metrics

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import (
    REVIEW_ACTIONS,
    ContractError,
    Decision,
    Review,
    ReviewAssignment,
    SlaEventKind,
)
from guardstream.contracts.topics import SPECS, Topic, TopicNames
from guardstream.policy import PolicyRegistry, review_sla
from guardstream.runtime.faults import FaultPoints
from guardstream.runtime.kafka import client_kwargs, dead_letter
from guardstream.runtime.loop import unusable
from guardstream.runtime.settings import Settings
from guardstream.sla.deadlines import Deadlines
from guardstream.sla.logic import (
    Item,
    Phase,
    ResponseTimes,
    assigned,
    enter,
    epoch,
    item_key,
    mark_sent,
    outputs,
    purgeable,
    reviewed,
    stamp_due,
)
from guardstream.sla.table import ItemTable

log = logging.getLogger(__name__)

TABLE = "sla_items"
SOURCES = (Topic.REVIEW, Topic.REVIEWS, Topic.ASSIGNMENTS)
PARTITIONS = SPECS[Topic.REVIEW].partitions
UNEXPECTED_ATTEMPTS = 3
TICK_CHUNK = 5000  # items fired per partition lock hold; the rest wait for the next chunk

meter = metrics.get_meter("guardstream")
_effects = {
    SlaEventKind.EXPIRED: meter.create_counter(
        "guardstream.sla.downgrades", unit="1", description="items downgraded to safe"
    ),
    SlaEventKind.WARNING: meter.create_counter(
        "guardstream.sla.warnings", unit="1", description="early SLA warnings"
    ),
    SlaEventKind.LATE_REVIEW: meter.create_counter(
        "guardstream.sla.late_reviews", unit="1", description="human reviews after expiry"
    ),
    SlaEventKind.ASSIGNMENT_BREACH: meter.create_counter(
        "guardstream.sla.assignment_breaches", unit="1", description="items assigned too late"
    ),
}
_dead_lettered = meter.create_counter(
    "guardstream.sla.dlq", unit="1", description="SLA source records sent to the DLQ"
)
_lateness = meter.create_histogram(
    "guardstream.sla.downgrade_lateness", unit="s", description="downgrade time − deadline"
)


def changelog_topic(settings: Settings) -> str:
    return f"{settings.group_id('sla')}-{TABLE}-changelog"


async def ensure_changelog(settings: Settings) -> bool:
    """Create the table's changelog topic (co-partitioned with the sources) if missing.

    faust would declare it on first use; we create it explicitly because brokers that
    auto-create topics (tansu) would otherwise make it with the wrong partition count.
    """
    name = changelog_topic(settings)
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="guardstream-sla-admin")
    await admin.start()
    try:
        if name in set(await admin.list_topics()):
            return False
        await admin.create_topics(
            [
                NewTopic(
                    name=name,
                    num_partitions=PARTITIONS,
                    replication_factor=settings.kafka.topic_replication,
                    topic_configs={"cleanup.policy": "compact"},
                )
            ]
        )
        return True
    finally:
        await admin.close()


def _faust_app(settings: Settings, datadir: Path) -> faust.App:
    """The worker's faust app: in-memory table store restored from its changelog, topics
    created up front (`topics create`), every produce acknowledged by all replicas."""
    session = settings.sla.session_timeout_s
    return faust.App(
        settings.group_id("sla"),
        broker=[f"kafka://{host.strip()}" for host in settings.kafka.bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_partitions=PARTITIONS,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(1.0, session / 3),
        producer_acks=-1,
    )


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    protocol = settings.kafka.security_protocol
    context = ssl.create_default_context() if protocol.endswith("SSL") else None
    if settings.kafka.sasl_mechanism:
        password = settings.kafka.sasl_password
        return faust.SASLCredentials(
            username=settings.kafka.sasl_username,
            password=password.get_secret_value() if password is not None else None,
            mechanism=settings.kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _as_record(message: Any) -> ConsumerRecord[bytes, bytes]:
    """A faust message in the shape the shared DLQ code takes (aiokafka's record)."""
    key, value = message.key, message.value
    return ConsumerRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=int(message.timestamp * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key) if key is not None else -1,
        serialized_value_size=len(value) if value is not None else -1,
        headers=list(message.headers or ()),
    )


def _traceparent(headers: Any) -> str | None:
    """The W3C traceparent a record carries (faust gives headers as pairs or a mapping)."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    for key, value in pairs:
        if key == "traceparent" and value:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def _trace_headers(traceparent: str | None) -> list[tuple[str, bytes]] | None:
    """An output's headers: the trace of the review decision its item started from."""
    return [("traceparent", traceparent.encode("latin-1"))] if traceparent else None


class SlaWorker:
    """One SLA worker: the faust app plus the per-partition deadline indexes it owns."""

    def __init__(
        self,
        settings: Settings,
        registry: PolicyRegistry,
        producer: AIOKafkaProducer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._producer = producer
        self._clock = clock
        self._names = TopicNames(settings.namespace)
        self._retain = float(settings.sla.retain_s)
        self.deadlines = Deadlines()
        self._locks: dict[int, asyncio.Lock] = {}
        self._recovered = False
        self._faults = FaultPoints(settings.process.fault)
        self.responses = ResponseTimes(settings.sla.response_window)
        self.pickups = ResponseTimes(settings.sla.response_window)  # decided → assigned
        self.counts: dict[str, int] = {k.value: 0 for k in SlaEventKind} | {"dlq": 0}
        self.max_lateness_s = 0.0
        self.last_tick_ms = 0.0
        self.ticks: deque[tuple[int, float]] = deque(maxlen=10_000)  # (items due, ms)
        # Downgrades a tick could have fired and did not (a later tick did): 0 while every
        # one fires on the first tick at or after its deadline, however late that tick runs.
        self.late_downgrades = 0
        self._previous_tick_at: float | None = None  # the clock of the tick before this one
        self._tracked_since_tick: set[str] = set()  # items (re)scheduled since a tick began
        self._unknown_to_previous_tick: set[str] = set()

        self._datadir = settings.sla.data_dir / settings.group_id("sla")
        self.app = _faust_app(settings, self._datadir)
        self.table = self.app.Table(TABLE, default=None, partitions=PARTITIONS)
        self._source = self.app.topic(
            *(self._names[t] for t in SOURCES), key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(self._source, name="sla-sources")(self._consume)
        self.app.timer(interval=settings.sla.tick_s, name="sla-tick")(self._tick)
        self.items = ItemTable(self.table, self.deadlines)
        self.table.on_recover(self._on_recovered)
        self.app.on_partitions_revoked.connect(self._on_revoked)

        _observe(self, clock)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
        self.app.finalize()
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()

    @property
    def ready(self) -> bool:
        return self._recovered and bool(self.deadlines.partitions)

    def status(self) -> dict[str, Any]:
        """Numbers for tests, the bench and logs (no post ids)."""
        oldest = self.deadlines.oldest_pending_age(self._clock())
        return {
            "partitions": self.deadlines.partitions,
            "pending": self.deadlines.pending_count(),
            "items": len(self.table.data),  # pending + finished items still retained
            "oldest_pending_age_s": oldest,
            "avg_review_response_s": self.responses.mean(),
            "avg_assignment_s": self.pickups.mean(),
            "counts": dict(self.counts),
            "max_lateness_s": self.max_lateness_s,
            "late_downgrades": self.late_downgrades,
            "last_tick_ms": self.last_tick_ms,
        }

    # --- partitions ------------------------------------------------------------------------
    def _owned(self) -> set[int]:
        review = self._names[Topic.REVIEW]
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == review}

    async def _on_recovered(self) -> None:
        fresh = self.deadlines.own(self._owned())
        bad = 0
        renamed: list[asyncio.Future[Any]] = []
        for key, value in list(self.table.data.items()):
            try:
                item = Item.from_dict(value)
            except (ValueError, KeyError, TypeError):
                bad += 1
                log.exception("unreadable SLA table entry skipped", extra={"key": str(key)[:128]})
                continue
            if item.partition in fresh:
                if key != item.key:  # written before items were keyed by tenant and post_id
                    renamed += [self.items.forget(item.partition, key), self.items.put(item)]
                self._track(item)
        if renamed:
            # Lost writes leave the old names in the changelog: renamed again next recovery.
            try:
                await _acked(renamed)
            except TransientError:
                log.warning("SLA items not renamed yet", extra={"count": len(renamed) // 2})
        self._recovered = True
        log.info(
            "SLA partitions recovered",
            extra={
                "partitions": self.deadlines.partitions,
                "pending": self.deadlines.pending_count(),
                "bad": bad,
            },
        )

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        review = self._names[Topic.REVIEW]
        revoked: Iterable[Any] = args[0] if args else ()
        for tp in revoked:
            if tp.topic == review:
                self.deadlines.drop(tp.partition)

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    def _track(self, item: Item) -> None:
        self.deadlines.track(item, self._retain)
        self._tracked_since_tick.add(item.key)

    async def _settle(self, items: Sequence[Item]) -> None:
        """Make `items` durable, publish their unsent effects, then record them as sent.

        Stamps reach the changelog before anything is published, so a crash after publishing
        replays the same stamps and therefore the same bytes.
        """
        await _acked(self.items.put(item) for item in items)
        sends: list[asyncio.Future[Any]] = []
        for item in items:
            for kind in item.unsent:
                for topic, key, event in outputs(item, kind):
                    sends.append(
                        await self._producer.send(
                            self._names[topic],
                            event.to_json(),
                            key=key.encode(),
                            headers=_trace_headers(item.traceparent),
                        )
                    )
        await _acked(sends)
        if sends:
            # Test-only: die after publishing, before the table says "sent" (a re-publish).
            self._faults.reach("sla_after_publish")
        done = []
        for item in items:
            kinds = item.unsent
            if not kinds:
                self._track(item)
                continue
            for kind in kinds:
                self.counts[kind.value] += 1
                _effects[kind].add(1, {"tenant": item.tenant})
                if kind is SlaEventKind.EXPIRED:
                    late = item.stamped[kind.value] - item.deadline_at
                    self.max_lateness_s = max(self.max_lateness_s, late)
                    _lateness.record(late, {"tenant": item.tenant})
            done.append(mark_sent(item, kinds))
        await _acked(self.items.put(item) for item in done)
        for item in done:
            self._track(item)

    # --- the agent -------------------------------------------------------------------------
    async def _consume(self, stream: faust.StreamT[bytes]) -> None:
        # Handled to the end (or dead-lettered) before faust may ack: nothing vanishes.
        async for event in stream.events():
            await self._handle_with_retries(event.message)

    async def _handle_with_retries(self, message: Any) -> None:
        attempt, backoff = 0, 0.1
        while True:
            attempt += 1
            try:
                async with self._lock(message.partition):
                    await self._handle(message)
            except (TransientError, KafkaError, TimeoutError) as exc:
                log.warning(
                    "SLA event failed, retrying",
                    extra={**_where(message), "error": type(exc).__name__, "attempt": attempt},
                )
            except Exception as exc:
                rejected = unusable(exc)  # the record's own fault: no retry can fix it
                if rejected is not None:
                    await self._dead_letter(message, rejected, attempt)
                    return
                log.exception("SLA event handling failed", extra=_where(message))
                if attempt >= UNEXPECTED_ATTEMPTS:
                    detail = f"{type(exc).__name__} after {attempt} attempts"
                    error = ContractError("processing_failed", detail)
                    await self._dead_letter(message, error, attempt)
                    return
            else:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.process.retry_backoff_max_s)

    async def _dead_letter(self, message: Any, error: ContractError, attempts: int) -> None:
        backoff = 0.1
        while True:
            try:
                future = await dead_letter(
                    self._producer,
                    self._names[Topic.DLQ],
                    _as_record(message),
                    error,
                    consumer=self._settings.group_id("sla"),
                    kafka=self._settings.kafka,
                    attempts=attempts,
                )
                await future
                break
            except (KafkaError, TimeoutError) as exc:
                log.warning("DLQ publish failed, retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.process.retry_backoff_max_s)
        self.counts["dlq"] += 1
        _dead_lettered.add(1, {"reason": error.reason, "topic": message.topic})

    async def _handle(self, message: Any) -> None:
        topic, partition, raw = message.topic, message.partition, message.value
        new: Item | None
        if topic == self._names[Topic.REVIEW]:
            decision = Decision.from_json(raw)
            _check_key(message, decision.post_id)
            if decision.action not in REVIEW_ACTIONS:
                raise ContractError(
                    "not_a_review_decision", f"action {decision.action.value} on the review topic"
                )
            pack = self._registry.by_ref(decision.policy) or self._registry.for_post(
                decision.tenant, None
            )
            sla = review_sla(pack, decision.categories)
            current = self.items.get(item_key(decision.tenant, decision.post_id))
            new = enter(decision, partition, sla, current)
            if new is not None:
                new = replace(new, traceparent=_traceparent(message.headers))
            if new is not None and new.assigned_at is not None:  # the assignment came first
                self.pickups.add(new.assigned_at - new.decided_at)
        elif topic == self._names[Topic.REVIEWS]:
            review = Review.from_json(raw)
            _check_key(message, review.post_id)
            current = self.items.get(item_key(review.tenant, review.post_id))
            new = reviewed(review, partition, current)
            if new is not None and current is not None and current.decision_id == new.decision_id:
                self.responses.add(epoch(review.reviewed_at) - current.decided_at)
        else:
            assignment = ReviewAssignment.from_json(raw)
            _check_key(message, assignment.post_id)
            current = self.items.get(item_key(assignment.tenant, assignment.post_id))
            new = assigned(assignment, partition, current)
            if new is not None and new.phase is Phase.PENDING and new.assigned_at is not None:
                self.pickups.add(new.assigned_at - new.decided_at)
        if new is not None:
            await self._settle([new])

    # --- the timer -------------------------------------------------------------------------
    async def _tick(self) -> None:
        started = time.perf_counter()
        now = self._clock()
        self._unknown_to_previous_tick = self._tracked_since_tick
        self._tracked_since_tick = set()
        fired = 0
        for partition in self.deadlines.partitions:
            index = self.deadlines.index(partition)
            while index is not None:
                due = index.pop_due(now, TICK_CHUNK)
                if not due:
                    break
                fired += len(due)
                try:
                    async with self._lock(partition):
                        await self.fire(partition, due, now)
                except Exception:  # a broker hiccup: keep them due, retry next tick
                    log.exception("SLA tick failed; retrying next tick", extra={"n": len(due)})
                    for key in due:
                        index.schedule(key, now)
                    break
                index = self.deadlines.index(partition)
        self._previous_tick_at = now
        self.last_tick_ms = (time.perf_counter() - started) * 1000
        self.ticks.append((fired, self.last_tick_ms))

    async def fire(self, partition: int, due: Sequence[str], now: float) -> None:
        """Act on the items of `partition` the index says are due at `now`."""
        changed: list[Item] = []
        purged: list[asyncio.Future[Any]] = []
        for key in due:
            item = self.items.get(key)
            if item is None or item.partition != partition:
                continue
            if purgeable(item, now, self._retain):
                purged.append(self.items.delete(item))
                continue
            new = stamp_due(item, now) or (item if item.unsent else None)
            if new is not None and self._missed_by_previous_tick(item, new):
                self.late_downgrades += 1
            if new is None:
                self._track(item)
            else:
                changed.append(new)
        if changed:
            await self._settle(changed)
        await _acked(purged)

    def _missed_by_previous_tick(self, item: Item, new: Item) -> bool:
        """Whether `new` is a downgrade the tick before this one should have fired: the item
        was scheduled before that tick began, and that tick already ran at or after the
        deadline."""
        expired = SlaEventKind.EXPIRED.value
        return (
            expired in new.stamped
            and expired not in item.stamped
            and self._previous_tick_at is not None
            and self._previous_tick_at >= item.deadline_at
            and item.key not in self._unknown_to_previous_tick
        )


def _observe(worker: SlaWorker, clock: Callable[[], float]) -> None:
    """The worker's gauges, read at each collection. The metric reader calls them on its own
    thread: they read the deadline indexes only, never the faust table (read from that thread,
    the table's store never finished stopping on SIGTERM)."""

    def gauge(name: str, unit: str, value: Callable[[], float | None]) -> None:
        def observe(_: Any) -> list[metrics.Observation]:
            current = value()
            return [] if current is None else [metrics.Observation(current)]

        meter.create_observable_gauge(name, callbacks=[observe], unit=unit)

    gauge("guardstream.sla.pending", "1", worker.deadlines.pending_count)
    gauge(
        "guardstream.sla.oldest_pending_age",
        "s",
        lambda: worker.deadlines.oldest_pending_age(clock()) or 0.0,
    )
    gauge("guardstream.sla.review_response_time_avg", "s", worker.responses.mean)
    gauge("guardstream.sla.assignment_time_avg", "s", worker.pickups.mean)


async def _acked(futures: Iterable[asyncio.Future[Any]]) -> None:
    pending = list(futures)
    if not pending:
        return
    try:
        await asyncio.gather(*pending)
    except Exception as exc:
        raise TransientError(f"delivery failed: {type(exc).__name__}") from exc


def _check_key(message: Any, post_id: str) -> None:
    # The table is partitioned like its sources only if every source is keyed by post_id.
    if message.key is not None and message.key != post_id.encode():
        raise ContractError("key_not_post_id", "record key differs from its post_id")


def _where(message: Any) -> dict[str, Any]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}
