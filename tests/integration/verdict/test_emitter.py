"""The emitter's DLQ records wait for `flush` (issue 25's second read): a batch that fails
before it is on the broker is retried whole, and its rejected records reach the DLQ once,
against the real broker."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import pytest
from aiokafka import ConsumerRecord

from guardstream.contracts.events import ContractError, DlqRecord
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from guardstream.verdict.emitter import Emitter
from tests.support.oracle import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def rejected(topic: str, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"post-1",
        value=b"\x00 not a post",
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=12,
        headers=[],
    )


async def test_a_batch_retried_after_a_failure_dead_letters_each_record_once(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    names = TopicNames(settings.namespace)
    producer = make_producer(settings, client_id="test-emitter")
    await producer.start()
    try:
        error = ContractError("invalid_json", "not JSON")
        # First try: the record is rejected, then the batch fails before its flush (as a
        # scorer's engine failing after the batch's invalid records were found).
        first = Emitter(producer, settings, "scorer")
        await first.dead_letter(rejected(names[Topic.SCORE_REQUESTS], 7), error)
        # The retry: the same record rejected again, and this time the batch is flushed.
        retry = Emitter(producer, settings, "scorer")
        await retry.dead_letter(rejected(names[Topic.SCORE_REQUESTS], 7), error)
        await retry.flush()
    finally:
        await producer.stop()
    dead = [DlqRecord.from_json(raw) for raw in await read_all(settings, [names[Topic.DLQ]])]
    assert [(d.origin.topic, d.origin.offset, d.reason) for d in dead] == [
        (names[Topic.SCORE_REQUESTS], 7, "invalid_json")
    ]


async def test_a_hostile_megabyte_post_leaves_a_bounded_redacted_dlq_record_with_its_digest(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    names = TopicNames(settings.namespace)
    # A megabyte "post": personal data at the start, NUL, an escaped lone surrogate, bytes
    # that are not UTF-8, and a card number that straddles the cut at 4 KiB.
    head = b'{"text":"mail zhang.san@example.com \\ud800 \x00 card 4111 1111 1111 1111 \xff\xfe'
    value = head + b"x" * (4096 - len(head) - 8) + b"4111 1111 1111 1111" + b"y" * (1 << 20)
    kept = Settings.model_validate(
        {
            **settings.model_dump(),
            "kafka": {**settings.kafka.model_dump(), "dlq_payload_max_bytes": 4096},
        }
    )
    redacting = kept.model_copy(
        update={"kafka": kept.kafka.model_copy(update={"dlq_redact": True})}
    )
    producer = make_producer(settings, client_id="test-emitter-hostile")
    await producer.start()
    try:
        for offset, which in ((1, kept), (2, redacting)):
            emitter = Emitter(producer, which, "triage")
            record = dataclasses.replace(rejected(names[Topic.POSTS], offset), value=value)
            await emitter.dead_letter(record, ContractError("text_too_long", "too long"))
            await emitter.flush()
    finally:
        await producer.stop()
    dead = sorted(
        (DlqRecord.from_json(raw) for raw in await read_all(settings, [names[Topic.DLQ]])),
        key=lambda d: d.origin.offset,
    )
    assert [d.origin.offset for d in dead] == [1, 2]
    for record in dead:  # bounded, with the size and digest of the whole
        assert record.payload_size == len(value) and record.payload_truncated
        assert record.payload_sha256 == hashlib.sha256(value).hexdigest()
        assert len(base64.b64decode(record.payload_b64)) <= 4096
    plain, redacted = (base64.b64decode(d.payload_b64) for d in dead)
    assert plain == value[:4096] and not dead[0].payload_redacted
    assert dead[1].payload_redacted
    assert b"zhang.san@" not in redacted and b"4111 1111" not in redacted
    assert b"[EMAIL]" in redacted and b"[CARD]" in redacted and b"\xff\xfe" in redacted
