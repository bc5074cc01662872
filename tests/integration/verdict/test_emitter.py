"""The emitter's DLQ records wait for `flush` (issue 25's second read): a batch that fails
before it is on the broker is retried whole, and its rejected records reach the DLQ once,
against the real broker."""

from __future__ import annotations

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
