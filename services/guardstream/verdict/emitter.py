"""What one batch sends, and the moment it is all on the broker.

Triage and the scorer queue their outputs (decisions, score requests, DLQ records) here while
they work through a batch and `flush()` before the batch's offsets may be committed. A failed
delivery is a transient error: the batch is retried whole, and the re-sent records carry the
same ids, so downstream sees a harmless replay. A delivery refused for good (a record too
large for the producer or broker, an invalid topic, no permission: `PERMANENT_PRODUCE_ERRORS`)
is `OutputRejected`, which `guardstream.runtime.rejections` turns into a DLQ record for the
input whose output it was, and an alert. Every record sent carries the trace context of
the input it derives from (`runtime/tracing.py`), and every decision is counted
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
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import (
    ContractError,
    Decision,
    Envelope,
)
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime import metrics, tracing
from guardstream.runtime.kafka import (
    PERMANENT_PRODUCE_ERRORS,
    Headers,
    OutputRejected,
    dead_letter,
    key_partitions,
)
from guardstream.runtime.settings import Settings
from guardstream.verdict.decisions import ACTION_TOPIC
from guardstream.verdict.journal import DecisionJournal, journal_key

log = logging.getLogger(__name__)


class Emitter:
    def __init__(self, producer: AIOKafkaProducer, settings: Settings, process: str) -> None:
        self._producer = producer
        self._process = process
        self._topics = TopicNames(settings.namespace)
        self._group = settings.group_id(process)
        self._kafka = settings.kafka
        self._max_request_bytes = settings.kafka.max_request_bytes
        # DLQ records wait for `flush` like the rest: a batch that fails before it (and is
        # retried whole) has sent none of them, so a retry does not dead-letter a record twice.
        self._dead_letters: list[tuple[ConsumerRecord[bytes, bytes], ContractError]] = []
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

    async def decisions(
        self, journal: DecisionJournal, decisions: Sequence[Decision]
    ) -> dict[str, bytes]:
        """Record each decision in the journal, then send what the journal says: for a post
        event decided before (a replay), the earlier decision, byte for byte. Returns what
        was sent, by journal key."""
        ours = {
            journal_key(d.tenant, d.post_event_id, d.policy): (d.to_json(), d) for d in decisions
        }
        settled = await journal.settle_many({key: raw for key, (raw, _) in ours.items()})
        for key, raw in settled.items():
            made, decision = ours[key]
            # Only an earlier decision (a replay) needs reading; ours is known already.
            await self.decision(raw, decision if raw == made else None)
        return settled

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: ContractError) -> None:
        """Queue `record`'s DLQ record (sent by `flush`, first)."""
        self._dead_letters.append((record, error))
        self._dead.append({"reason": error.reason, "consumer": self._group})

    def copy_to(self, other: Emitter) -> None:
        """Queue on `other` everything queued here (this emitter keeps its own queue): several
        callers' outputs sent by one `flush` of `other` (`api.publisher`)."""
        other._queued += self._queued
        other._dead_letters += self._dead_letters
        other._decided += self._decided
        other._dead += self._dead

    async def flush(self) -> None:
        queued, self._queued = self._queued, []
        dead_letters, self._dead_letters = self._dead_letters, []
        decided, self._decided = self._decided, []
        dead, self._dead = self._dead, []
        try:
            # Sizes first: a record refused for its size stops the flush before anything of it
            # is sent (so a caller that flushes its part again alone duplicates nothing).
            for _, key, value, headers in queued:
                _check_size(key, value, headers, self._max_request_bytes)
            pending = [
                await dead_letter(
                    self._producer,
                    self._topics[Topic.DLQ],
                    record,
                    error,
                    consumer=self._group,
                    kafka=self._kafka,
                )
                for record, error in dead_letters
            ]
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


def _tally(attribute_sets: Sequence[dict[str, str]]) -> list[tuple[dict[str, str], int]]:
    """Equal attribute sets counted together."""
    counts = Counter(tuple(attributes.items()) for attributes in attribute_sets)
    return [(dict(items), count) for items, count in counts.items()]
