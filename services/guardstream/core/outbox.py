"""What one batch sends, and the moment it is all on the broker.

Triage and the scorer queue their outputs (decisions, score requests, DLQ records) here while
they work through a batch and `flush()` before the batch's offsets may be committed. A failed
delivery is a transient error: the batch is retried whole, and the re-sent records carry the
same ids, so downstream sees a harmless replay. A delivery refused for good (a record too
large for the producer or broker, an invalid topic, no permission: `PERMANENT_PRODUCE_ERRORS`)
is `OutputRejected`; `isolating_rejections` then finds the input whose output it was (halving
the batch, each half handled again: re-emission is idempotent) and sends that input to the DLQ
with reason `output_rejected` and an alert (`moderation.alerts.v1`, kind `output_rejected`),
and the consumer goes on with the rest. Every record sent carries the trace context of
the input it derives from (`core/tracing.py`), and every decision is counted
(`guardstream.pipeline.decisions`) once the broker has it.

Keyed outputs are not handed to the producer one by one: `flush()` sorts them by partition,
as the producer's default partitioner would (murmur2 of the key, Kafka's rule, so other
clients agree on where a key lives), and hands each partition's records over as record
batches, in order. One future per batch instead of one per record: the per-record cost of
`AIOKafkaProducer.send` was a fifth of triage's CPU time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from guardstream.core import metrics, tracing
from guardstream.core.contracts import (
    Alert,
    AlertSeverity,
    ContractError,
    Decision,
    Envelope,
    utcnow,
)
from guardstream.core.decisions import ACTION_TOPIC
from guardstream.core.journal import DecisionJournal, journal_key
from guardstream.core.kafka import (
    PERMANENT_PRODUCE_ERRORS,
    Headers,
    OutputRejected,
    dead_letter,
    key_partitions,
)
from guardstream.core.loop import BatchHandler, Records, TransientError, isolate
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, producer: AIOKafkaProducer, settings: Settings, process: str) -> None:
        self._producer = producer
        self._process = process
        self._topics = TopicNames(settings.namespace)
        self._group = settings.group_id(process)
        self._max_request_bytes = settings.kafka_max_request_bytes
        self._pending: list[asyncio.Future[Any]] = []
        # Counted once the broker has them (a retried batch is not counted twice).
        self._decided: list[dict[str, str]] = []
        self._dead: list[dict[str, str]] = []
        # (topic, key, value, headers) until flush.
        self._queued: list[tuple[str, bytes, bytes, Headers]] = []
        # After `flush()`: (topic, partition, offset of its last record) of each record batch.
        self.published: list[tuple[str, int, int]] = []

    async def send(self, topic: Topic, event: Envelope, key: str) -> None:
        """`event` to `topic`; an event about a post event (`post_event_id`) continues the
        trace of the input that carried that post event."""
        await self.send_json(topic, event.to_json(), key, getattr(event, "post_event_id", None))

    async def send_json(
        self, topic: Topic, raw: bytes, key: str, post_event_id: str | None = None
    ) -> None:
        """An event already serialised (`raw`) to `topic`, as `send` would send it."""
        headers = tracing.output_headers(post_event_id)
        self._queued.append((self._topics[topic], key.encode(), raw, headers))

    async def decision(self, raw: bytes, decision: Decision | None = None) -> None:
        """A serialised decision to the action topic of its action, keyed by post. `decision`
        is what `raw` says, when the caller has it; otherwise `raw` is read."""
        if decision is None:
            decision = Decision.from_json(raw)
        topic = self._topics[ACTION_TOPIC[decision.action]]
        attributes = metrics.decision_attributes(decision, self._process)
        headers = tracing.output_headers(
            decision.post_event_id,
            attributes=lambda: {
                "guardstream.verdict": attributes["verdict"],
                "guardstream.action": attributes["action"],
                "guardstream.source": attributes["source"],
                "guardstream.tenant": attributes["tenant"],
                "guardstream.post_id_hash": tracing.hashed(decision.post_id),
            },
        )
        self._queued.append((topic, decision.post_id.encode(), raw, headers))
        self._decided.append(attributes)

    async def decisions(self, journal: DecisionJournal, decisions: Sequence[Decision]) -> None:
        """Record each decision in the journal, then send what the journal says: for a post
        event decided before (a replay), the earlier decision, byte for byte."""
        ours = {
            journal_key(d.tenant, d.post_event_id, d.policy): (d.to_json(), d) for d in decisions
        }
        settled = await journal.settle_many({key: raw for key, (raw, _) in ours.items()})
        for key, raw in settled.items():
            made, decision = ours[key]
            # Only an earlier decision (a replay) needs reading; ours is known already.
            await self.decision(raw, decision if raw == made else None)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: ContractError) -> None:
        self._pending.append(
            await dead_letter(
                self._producer,
                self._topics[Topic.DLQ],
                record,
                error,
                consumer=self._group,
                max_request_bytes=self._max_request_bytes,
            )
        )
        self._dead.append({"reason": error.reason, "consumer": self._group})

    async def flush(self) -> None:
        queued, self._queued = self._queued, []
        pending, self._pending = self._pending, []
        decided, self._decided = self._decided, []
        dead, self._dead = self._dead, []
        try:
            batches = await self._publish(queued)
            await asyncio.gather(*pending, *(future for future, _ in batches))
        except PERMANENT_PRODUCE_ERRORS as exc:
            raise OutputRejected(exc) from exc
        except Exception as exc:
            raise TransientError(f"delivery failed: {type(exc).__name__}") from exc
        # One add per distinct attribute set: the SDK takes about 8 µs per call.
        for attributes, count in _tally(decided):
            metrics.decisions.add(count, attributes)
        for attributes, count in _tally(dead):
            metrics.dead_letters.add(count, attributes)
        for future, count in batches:
            sent = future.result()  # the batch's base offset: its records follow it
            self.published.append((sent.topic, sent.partition, sent.offset + count - 1))

    async def _publish(
        self, queued: Sequence[tuple[str, bytes, bytes, Headers]]
    ) -> list[tuple[Any, int]]:
        """Hand `queued` to the producer as record batches, one partition's records in order;
        returns each batch's delivery future and its record count."""
        by_topic: dict[str, list[tuple[bytes, bytes, Headers]]] = {}
        for topic, key, value, headers in queued:
            by_topic.setdefault(topic, []).append((key, value, headers))
        by_partition: dict[tuple[str, int], list[tuple[bytes, bytes, Headers]]] = {}
        for topic, records in by_topic.items():
            known = await self._producer.partitions_for(topic)
            chosen = key_partitions([key for key, _, _ in records], list(known))
            for partition, record in zip(chosen, records, strict=True):
                by_partition.setdefault((topic, partition), []).append(record)
        batches: list[tuple[Any, int]] = []
        for (topic, partition), records in by_partition.items():
            batch = self._producer.create_batch()
            for key, value, headers in records:
                _check_size(key, value, headers, self._max_request_bytes)
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    count = batch.record_count()  # full: send it, start the next
                    sent = await self._producer.send_batch(batch, topic, partition=partition)
                    batches.append((sent, count))
                    batch = self._producer.create_batch()
                    # The first record always fits.
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            count = batch.record_count()
            batches.append(
                (await self._producer.send_batch(batch, topic, partition=partition), count)
            )
        return batches


def _check_size(key: bytes, value: bytes, headers: Headers, max_request_bytes: int) -> None:
    """The check `AIOKafkaProducer.send` makes and `send_batch` skips: a record larger than
    the producer's `max_request_size` is refused for good (the broker's own limit, if lower,
    refuses it with the same error on delivery)."""
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    if size > max_request_bytes:
        raise MessageSizeTooLargeError(
            f"an output record is {size} bytes, over GUARDSTREAM_KAFKA_MAX_REQUEST_BYTES="
            f"{max_request_bytes}"
        )


OUTPUT_REJECTED = "output_rejected"  # DLQ reason and alert kind
REJECTIONS: tuple[type[Exception], ...] = (OutputRejected, *PERMANENT_PRODUCE_ERRORS)


def isolating_rejections(
    handler: BatchHandler, producer: AIOKafkaProducer, settings: Settings, process: str
) -> BatchHandler:
    """`handler`, with a batch whose output was refused for good (`OutputRejected`, or one of
    `PERMANENT_PRODUCE_ERRORS` raised while queueing) handled again in halves until the input
    whose output it was stands alone: that input goes to the DLQ and an alert is raised, the
    others are handled as usual. Transient errors pass through (the loop retries)."""
    topics = TopicNames(settings.namespace)
    group = settings.group_id(process)
    max_request_bytes = settings.kafka_max_request_bytes

    def refused(exc: BaseException) -> ContractError | None:
        if not isinstance(exc, REJECTIONS):
            return None  # transient or a bug: the loop's business
        name = type(exc.error if isinstance(exc, OutputRejected) else exc).__name__
        return ContractError(
            OUTPUT_REJECTED, f"{name}: an output of this record was refused by the broker"
        )

    async def reject(record: ConsumerRecord[bytes, bytes], problem: ContractError) -> None:
        name = problem.detail.split(":", 1)[0]
        sent = await _refused_or_sent(
            dead_letter(
                producer,
                topics[Topic.DLQ],
                record,
                problem,
                consumer=group,
                max_request_bytes=max_request_bytes,
            )
        )
        if not sent:  # the DLQ record itself is too large for the broker: keep no payload
            await _delivered(
                dead_letter(
                    producer,
                    topics[Topic.DLQ],
                    record,
                    problem,
                    consumer=group,
                    max_request_bytes=max_request_bytes,
                    max_payload=0,
                )
            )
        metrics.dead_letters.add(1, {"reason": OUTPUT_REJECTED, "consumer": group})
        alert_id = str(
            uuid.uuid5(
                uuid.NAMESPACE_URL,
                f"alert:{OUTPUT_REJECTED}:{record.topic}:{record.partition}:{record.offset}:{group}",
            )
        )
        now = utcnow()
        alert = Alert(
            event_id=alert_id,
            produced_at=now,
            alert_id=alert_id,
            kind=OUTPUT_REJECTED,
            severity=AlertSeverity.CRITICAL,
            summary=(
                f"{group}: the broker refused an output of {record.topic}[{record.partition}]"
                f"@{record.offset} for good ({name}); the input is in the DLQ"
            ),
            labels={
                "consumer": group,
                "error": name,
                "origin_topic": record.topic,
                "origin_partition": str(record.partition),
                "origin_offset": str(record.offset),
            },
            raised_at=now,
        )
        await _delivered(
            producer.send(topics[Topic.ALERTS], alert.to_json(), key=alert_id.encode())
        )
        log.error(
            "output refused for good: input dead-lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": name,
                "consumer": group,
            },
        )

    async def handle(records: Records) -> None:
        await isolate(records, handler, refused, reject)  # the same halving as a store's refusal

    return handle


async def _refused_or_sent(sending: Any) -> bool:
    """Await a `producer.send` and its delivery: False if refused for good; transient
    failures raise `TransientError` (the loop retries the batch)."""
    try:
        await _delivered(sending)
    except OutputRejected:
        return False
    return True


async def _delivered(sending: Any) -> None:
    try:
        future = await sending
        await future
    except PERMANENT_PRODUCE_ERRORS as exc:
        raise OutputRejected(exc) from exc
    except Exception as exc:
        raise TransientError(f"delivery failed: {type(exc).__name__}") from exc


def _tally(attribute_sets: Sequence[dict[str, str]]) -> list[tuple[dict[str, str], int]]:
    """Equal attribute sets counted together."""
    counts = Counter(tuple(attributes.items()) for attributes in attribute_sets)
    return [(dict(items), count) for items, count in counts.items()]
