"""Kafka plumbing shared by every process: clients from settings, topic creation, the DLQ.

Producers wait for all in-sync replicas (`acks=all`) and are not idempotent: the local broker
(tansu) rejects InitProducerId, and exactly-once effects come from deterministic ids instead.
Consumers never auto-commit; each process commits only after its output is acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import murmur2

from guardstream.contracts import ids
from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import ContractError, DlqRecord, Origin, clip, utcnow
from guardstream.contracts.ids import stable_id
from guardstream.contracts.redaction import redact
from guardstream.contracts.topics import CATALOGUE, DAY_MS, Topic, TopicNames
from guardstream.runtime import tracing
from guardstream.runtime.settings import KafkaSettings, Settings, topic_overrides

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# Produce errors no retry can fix: the producer or the broker refuses the record (too large)
# or its topic (invalid name, no write permission) for good. Every other failed delivery is
# transient (broker down, leader moving, timeout) and the batch is retried.
PERMANENT_PRODUCE_ERRORS: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


class OutputRejected(PermanentError):
    """An output of the batch was refused for good (`error`, one of `PERMANENT_PRODUCE_ERRORS`):
    retrying cannot help; the input it derives from goes to the DLQ (`verdict.emitter`)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"output refused: {type(error).__name__}")
        self.error = error


def client_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap,
        "security_protocol": settings.kafka.security_protocol,
    }
    if settings.kafka.sasl_mechanism:
        kwargs["sasl_mechanism"] = settings.kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka.sasl_username
        if settings.kafka.sasl_password is not None:
            kwargs["sasl_plain_password"] = settings.kafka.sasl_password.get_secret_value()
    return kwargs


# Per-partition record batch. aiokafka sends one produce request per broker at a time, with at
# most one batch per partition in it: with its default (16 KB) one emitter flush of triage
# (500 posts) needed two or more round trips per partition, and concurrent batches queued
# behind each other waiting for acknowledgements. Always within `kafka_max_request_bytes`.
PRODUCER_BATCH_BYTES = 1 << 20


# How long a stream producer waits for more records before sending a batch.
STREAM_LINGER_MS = 5
# The API's: an answer waits for its record's acknowledgement, so a linger is pure latency on
# every request (about 5 ms of a cache hit's); concurrent requests still share a produce
# request, since aiokafka sends one request per broker at a time and the rest gather meanwhile.
INTERACTIVE_LINGER_MS = 0


def make_producer(
    settings: Settings, client_id: str, *, linger_ms: int = STREAM_LINGER_MS
) -> AIOKafkaProducer:
    """The producer every service publishes with (acks=all). `linger_ms`: the stream services'
    default; an interactive caller that awaits each acknowledgement passes
    `INTERACTIVE_LINGER_MS`."""
    return AIOKafkaProducer(
        **client_kwargs(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=settings.kafka.max_request_bytes,
        request_timeout_ms=30_000,
    )


def make_consumer(
    settings: Settings,
    *,
    group_id: str | None,
    client_id: str,
    max_records: int,
    fetch_min_bytes: int = 1,
    fetch_max_wait_ms: int | None = None,
) -> AIOKafkaConsumer:
    """`fetch_min_bytes`/`fetch_max_wait_ms`: how much the broker gathers before it answers a
    fetch (default: any record at once, waiting at most `GUARDSTREAM_KAFKA_FETCH_MAX_WAIT_MS`
    on a quiet topic); a read model that may lag raises both to fetch in fewer, larger parts."""
    return AIOKafkaConsumer(
        **client_kwargs(settings),
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_min_bytes=fetch_min_bytes,
        fetch_max_wait_ms=(
            settings.kafka.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms
        ),
        max_poll_interval_ms=settings.kafka.max_poll_interval_ms,
        fetch_max_bytes=max(settings.kafka.max_request_bytes, 52_428_800),
        max_partition_fetch_bytes=settings.kafka.max_request_bytes,
    )


_MURMUR_SEED = 0x9747B28C
_MURMUR_M = np.uint32(0x5BD1E995)
_SMALL_GROUP = 4  # fewer keys of one length than this: numpy's call overhead is not worth it


def key_partitions(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """The partition of each key as Kafka's default partitioner chooses it (Java's and
    aiokafka's: positive murmur2 of the key modulo the partition count, over the partitions
    in id order), for a whole batch of keys at once: keys of one length are hashed together,
    4 bytes at a time across all of them."""
    ordered = sorted(partitions)
    hashes = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(index)
    for length, indices in by_length.items():
        if len(indices) < _SMALL_GROUP:
            for index in indices:
                hashes[index] = murmur2(keys[index])
            continue
        data = np.frombuffer(b"".join(keys[i] for i in indices), np.uint8)
        data = data.reshape(len(indices), length)
        h = np.full(len(indices), (_MURMUR_SEED ^ length) & 0xFFFFFFFF, np.uint32)
        whole = length // 4
        words = np.ascontiguousarray(data[:, : 4 * whole]).view("<u4")
        for column in range(whole):
            k = words[:, column] * _MURMUR_M
            k ^= k >> np.uint32(24)
            k *= _MURMUR_M
            h *= _MURMUR_M
            h ^= k
        tail, base = length % 4, length & ~3
        if tail >= 3:
            h ^= data[:, base + 2].astype(np.uint32) << np.uint32(16)
        if tail >= 2:
            h ^= data[:, base + 1].astype(np.uint32) << np.uint32(8)
        if tail >= 1:
            h ^= data[:, base].astype(np.uint32)
            h *= _MURMUR_M
        h ^= h >> np.uint32(13)
        h *= _MURMUR_M
        h ^= h >> np.uint32(15)
        for index, value in zip(indices, h.tolist(), strict=True):
            hashes[index] = value
    return [ordered[(value & 0x7FFFFFFF) % len(ordered)] for value in hashes]


@dataclass(frozen=True, slots=True)
class TopicReport:
    created: tuple[str, ...]
    existing: tuple[str, ...]
    mismatched: tuple[str, ...]  # exist with a different partition count than the catalogue


def topic_retention_ms(settings: Settings) -> dict[Topic, int]:
    """Each topic's `retention.ms` as configured: the catalogue's, overridden by
    `GUARDSTREAM_RETENTION_DLQ_DAYS` (the DLQ) and `GUARDSTREAM_RETENTION_TOPIC_DAYS`."""
    overrides = topic_overrides(settings.retention.topic_days)
    out: dict[Topic, int] = {}
    for spec in CATALOGUE:
        days = overrides.get(spec.topic.value)
        if spec.topic is Topic.DLQ:
            days = settings.retention.dlq_days
        out[spec.topic] = round(days * DAY_MS) if days is not None else spec.retention_ms
    return out


@dataclass(frozen=True, slots=True)
class RetentionReport:
    differing: dict[str, tuple[int | None, int]]  # topic: (retention.ms found, configured)
    refused: str | None = None  # why the broker did not take the change (then nothing changed)


async def apply_topic_retention(settings: Settings) -> RetentionReport:
    """Set each existing topic's `retention.ms` to the configured one where it differs
    (`guardstream maintenance`). A broker without AlterConfigs (tansu) is reported, not
    raised: the topics keep their retention and the report says which differ."""
    names = TopicNames(settings.namespace)
    wanted = {names[t]: ms for t, ms in topic_retention_ms(settings).items()}
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="guardstream-admin")
    await admin.start()
    try:
        present = [n for n in wanted if n in set(await admin.list_topics())]
        if not present:
            return RetentionReport({})
        found: dict[str, int | None] = dict.fromkeys(present)
        for response in await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
        ):
            for resource in response.resources:
                _, _, _, name, entries = resource[:5]
                for entry in entries:
                    if entry[0] == "retention.ms" and entry[1] is not None:
                        found[name] = int(entry[1])
        changed = {n: (found[n], wanted[n]) for n in present if found[n] != wanted[n]}
        if changed:
            try:
                await admin.alter_configs(
                    [
                        ConfigResource(
                            ConfigResourceType.TOPIC, n, {"retention.ms": str(wanted[n])}
                        )
                        for n in changed
                    ]
                )
            except KafkaError as exc:
                return RetentionReport(changed, f"{type(exc).__name__}: {exc}")
        return RetentionReport(changed)
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, topics: Iterable[Topic] | None = None) -> TopicReport:
    """Create the catalogue's topics that do not exist yet. Safe to run any number of times."""
    names = TopicNames(settings.namespace)
    wanted = [spec for spec in CATALOGUE if topics is None or spec.topic in set(topics)]
    retention = topic_retention_ms(settings)
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="guardstream-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted if names[spec.topic] not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=names[spec.topic],
                        num_partitions=spec.partitions,
                        replication_factor=settings.kafka.topic_replication,
                        topic_configs={
                            **spec.config(),
                            "retention.ms": str(retention[spec.topic]),
                        },
                    )
                    for spec in missing
                ]
            )
        present = [spec for spec in wanted if spec not in missing]
        mismatched: list[str] = []
        if present:
            described = await admin.describe_topics([names[s.topic] for s in present])
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            mismatched = [
                names[s.topic] for s in present if counts.get(names[s.topic]) != s.partitions
            ]
    finally:
        await admin.close()
    return TopicReport(
        created=tuple(names[s.topic] for s in missing),
        existing=tuple(names[s.topic] for s in present),
        mismatched=tuple(mismatched),
    )


def origin_headers(record: ConsumerRecord[bytes, bytes], reason: str, attempts: int) -> Headers:
    return [
        ("gs-origin-topic", record.topic.encode()),
        ("gs-origin-partition", str(record.partition).encode()),
        ("gs-origin-offset", str(record.offset).encode()),
        ("gs-reason", reason.encode()),
        ("gs-attempts", str(attempts).encode()),
    ]


def dlq_record(
    record: ConsumerRecord[bytes, bytes],
    *,
    consumer: str,
    reason: str,
    detail: str,
    attempts: int,
    max_payload: int,
    redacted: bool = False,
) -> DlqRecord:
    """The DLQ record of `record`: at most `max_payload` bytes of its payload (with personal
    data replaced by placeholders when `redacted`), its size and the SHA-256 of the whole."""
    payload = record.value or b""
    digest = hashlib.sha256(payload).hexdigest()
    kept = payload[:max_payload]
    if redacted and kept:
        # Read a little past the cut so an item the cut splits is still recognised, and keep
        # bytes that are not UTF-8 as they were (surrogateescape round-trips them).
        text = payload[: max_payload + _REDACT_MARGIN].decode("utf-8", "surrogateescape")
        kept = redact(text).encode("utf-8", "surrogateescape")[:max_payload]
    return DlqRecord(
        # One DLQ event per (origin, reason): a replayed rejection is recognisably the same.
        event_id=stable_id(
            ids.DLQ_RECORD, record.topic, record.partition, record.offset, consumer, reason
        ),
        produced_at=utcnow(),
        origin=Origin(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key_b64=base64.b64encode(record.key).decode() if record.key is not None else None,
        ),
        consumer=consumer,
        reason=reason,
        detail=clip(DlqRecord, "detail", detail),
        attempts=attempts,
        payload_b64=base64.b64encode(kept).decode(),
        payload_size=len(payload),
        payload_sha256=digest,
        payload_truncated=max_payload < len(payload),
        payload_redacted=redacted and bool(kept),
    )


_REDACT_MARGIN = 4096  # longer than any e-mail, phone, ID or card number


async def dead_letter(
    producer: AIOKafkaProducer,
    dlq_topic: str,
    record: ConsumerRecord[bytes, bytes],
    error: ContractError,
    *,
    consumer: str,
    kafka: KafkaSettings,
    attempts: int = 1,
    max_payload: int | None = None,
) -> asyncio.Future[Any]:
    """Queue `record` for the DLQ with its origin and reason; returns the delivery future.
    The DLQ record continues the rejected record's trace. It keeps at most `max_payload` bytes
    of the payload (default: `kafka.dlq_payload_max_bytes`, never more than 70% of
    `kafka.max_request_bytes`), redacted when `kafka.dlq_redact`; its size and SHA-256 always."""
    cap = min(kafka.dlq_payload_max_bytes, kafka.max_request_bytes * 7 // 10)
    with tracing.record_scope(record):
        log.warning(
            "record rejected to DLQ",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": error.reason,
                "consumer": consumer,
            },
        )
    dead = dlq_record(
        record,
        consumer=consumer,
        reason=error.reason,
        detail=error.detail,
        attempts=attempts,
        max_payload=cap if max_payload is None else min(cap, max_payload),
        redacted=kafka.dlq_redact,
    )
    future: asyncio.Future[Any] = await producer.send(
        dlq_topic,
        dead.to_json(),
        key=record.key,
        headers=tracing.output_headers(
            record=record,
            attributes=lambda: {"guardstream.dlq_reason": error.reason},
            headers=origin_headers(record, error.reason, attempts),
        ),
    )
    return future
