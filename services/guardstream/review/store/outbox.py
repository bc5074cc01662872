"""The review outbox: what a committed review transaction still has to deliver, written in that
transaction and taken by the relay (`review.relay`) after commit.

Three kinds, each with its own payload model: an event for a Kafka topic (`EventPayload`), a
human verdict for the verdict cache (`HumanVerdictPayload`), a feedback sample for the archive
(`FeedbackSamplePayload`). The row's `topic` column holds the event's topic, or for the other
kinds their fixed destination ("verdict_cache", "archive"), as it has since the table was
made; the kind names are the values the table's CHECK constraint allows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Generic, Protocol, Self, TypeVar

import asyncpg

from guardstream.contracts.events import Envelope
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.topics import Topic
from guardstream.review.store.db import Rows
from guardstream.verdict.cache import CachedVerdict, human_verdict_key


class OutboxKind(enum.StrEnum):
    EVENT = "event"
    HUMAN_VERDICT = "human_verdict"
    FEEDBACK_SAMPLE = "feedback_sample"


@dataclass(frozen=True, slots=True)
class EventPayload:
    """An event for its topic, keyed as the topic is (post_id; an alert: its alert_id)."""

    kind: ClassVar[OutboxKind] = OutboxKind.EVENT
    topic: Topic
    key: str
    event: bytes  # the event's JSON, sent as it is

    @classmethod
    def of(cls, topic: Topic, key: str, event: Envelope) -> Self:
        return cls(topic, key, event.to_json())

    def row(self) -> tuple[str, str, bytes]:
        return self.topic.value, self.key, self.event

    @classmethod
    def from_row(cls, topic: str, key: str, payload: bytes) -> Self:
        return cls(Topic(topic), key, payload)


@dataclass(frozen=True, slots=True)
class HumanVerdictPayload:
    """A human verdict for the verdict cache, under its tenant's own key (never shared)."""

    kind: ClassVar[OutboxKind] = OutboxKind.HUMAN_VERDICT
    destination: ClassVar[str] = "verdict_cache"
    key: str  # `human_verdict_key(tenant, content_key)`
    verdict: CachedVerdict

    @classmethod
    def of(cls, tenant: str, content_key: str, verdict: CachedVerdict) -> Self:
        return cls(human_verdict_key(tenant, content_key), verdict)

    def row(self) -> tuple[str, str, bytes]:
        return self.destination, self.key, self.verdict.model_dump_json().encode()

    @classmethod
    def from_row(cls, topic: str, key: str, payload: bytes) -> Self:
        return cls(key, CachedVerdict.model_validate_json(payload))


@dataclass(frozen=True, slots=True)
class FeedbackSamplePayload:
    """A review's feedback sample for the archive (keyed by its sample id, the review's)."""

    kind: ClassVar[OutboxKind] = OutboxKind.FEEDBACK_SAMPLE
    destination: ClassVar[str] = "archive"
    sample: FeedbackSample

    def row(self) -> tuple[str, str, bytes]:
        return self.destination, self.sample.sample_id, self.sample.to_json()

    @classmethod
    def from_row(cls, topic: str, key: str, payload: bytes) -> Self:
        return cls(FeedbackSample.from_json(payload))


class _Payload(Protocol):
    kind: ClassVar[OutboxKind]

    def row(self) -> tuple[str, str, bytes]:
        """(topic column, key, payload bytes)."""
        ...

    @classmethod
    def from_row(cls, topic: str, key: str, payload: bytes) -> Self: ...


OutboxPayload = EventPayload | HumanVerdictPayload | FeedbackSamplePayload
P = TypeVar("P", bound=_Payload)
_PAYLOADS: dict[OutboxKind, type[OutboxPayload]] = {
    OutboxKind.EVENT: EventPayload,
    OutboxKind.HUMAN_VERDICT: HumanVerdictPayload,
    OutboxKind.FEEDBACK_SAMPLE: FeedbackSamplePayload,
}


@dataclass(frozen=True, slots=True)
class Queued(Generic[P]):
    id: int
    payload: P
    traceparent: str | None = None  # the trace an event continues (see `take`)


# An event continues the trace of the contested decision its post's task came from (events
# are keyed by post_id; of several tasks of one post, the newest).
_TAKE = (
    "SELECT id, kind, topic, key, payload, (SELECT t.traceparent FROM tasks t"
    " WHERE t.post_id = outbox.key AND t.traceparent IS NOT NULL"
    " ORDER BY t.created_at DESC LIMIT 1) AS traceparent"
    " FROM outbox WHERE sent_at IS NULL AND kind = $1"
    " ORDER BY id LIMIT $2 FOR UPDATE OF outbox SKIP LOCKED"
)
# The latest human verdict per (tenant, content key) still within its lifetime: what the
# verdict cache must hold.
_HUMAN_VERDICTS = (
    "SELECT DISTINCT ON (key) topic, key, payload FROM outbox WHERE kind = $1"
    " AND created_at > $2 ORDER BY key, id DESC"
)


def _payload(row: asyncpg.Record) -> OutboxPayload:
    return _PAYLOADS[OutboxKind(row["kind"])].from_row(
        row["topic"], row["key"], bytes(row["payload"])
    )


class OutboxRows(Rows):
    __slots__ = ()

    async def enqueue(self, payload: OutboxPayload) -> None:
        """Queue `payload` for the relay; inside the transaction whose change it delivers."""
        topic, key, raw = payload.row()
        await self.db.execute(
            "INSERT INTO outbox (kind, topic, key, payload) VALUES ($1, $2, $3, $4)",
            payload.kind.value,
            topic,
            key,
            raw,
        )

    async def take(self, of: type[P], limit: int) -> list[Queued[P]]:
        """Unsent items of one kind, oldest first, locked for this transaction; rows another
        relay holds are skipped (replicas never send the same row at once)."""
        rows = await self.db.fetch(_TAKE, of.kind.value, limit)
        return [
            Queued(
                r["id"],
                of.from_row(r["topic"], r["key"], bytes(r["payload"])),
                r["traceparent"],
            )
            for r in rows
        ]

    async def mark_sent(self, ids: Sequence[int], now: datetime) -> None:
        if ids:
            await self.db.execute(
                "UPDATE outbox SET sent_at = $2 WHERE id = ANY($1::bigint[])", list(ids), now
            )

    async def human_verdicts_since(self, since: datetime) -> list[HumanVerdictPayload]:
        """The latest human verdict per cache key queued since `since`."""
        rows = await self.db.fetch(_HUMAN_VERDICTS, OutboxKind.HUMAN_VERDICT.value, since)
        return [
            HumanVerdictPayload.from_row(r["topic"], r["key"], bytes(r["payload"])) for r in rows
        ]

    async def unsent(self, limit: int) -> list[Queued[OutboxPayload]]:
        """What is waiting to be delivered, oldest first, every kind (an inspection: nothing
        is locked)."""
        rows = await self.db.fetch(
            "SELECT id, kind, topic, key, payload FROM outbox WHERE sent_at IS NULL"
            " ORDER BY id LIMIT $1",
            limit,
        )
        return [Queued(r["id"], _payload(r)) for r in rows]
