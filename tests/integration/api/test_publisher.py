"""The API's group commit (`api.publisher`) against the real broker: concurrent requests'
records go out in one flush, each request returns once its records are acknowledged, each
record lands once; a record refused for good fails its own request only; a broker failure
fails every request of the round."""

from __future__ import annotations

import asyncio

import pytest

from guardstream.api.publisher import GroupPublisher
from guardstream.contracts.errors import TransientError
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import OutputRejected, ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from guardstream.verdict.emitter import Emitter
from tests.support.oracle import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def queued(publisher: GroupPublisher, value: bytes) -> Emitter:
    emitter = publisher.emitter()
    await emitter.send_json(Topic.ALLOW, value, key=value[:16].decode())
    return emitter


async def test_concurrent_requests_share_one_flush_and_each_record_lands_once(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    producer = make_producer(settings, client_id="test-publisher", linger_ms=0)
    await producer.start()
    try:
        publisher = GroupPublisher(producer, settings, "api")
        values = [b"post-%03d" % i for i in range(40)]
        # One request alone first: flushed at once, a round of its own.
        await publisher.flush(await queued(publisher, b"alone"))
        assert publisher.counts == {"flushes": 1, "emitters": 1}
        emitters = [await queued(publisher, v) for v in values]
        await asyncio.gather(*(publisher.flush(e) for e in emitters))
        # The 40 arrived together: one round (the round starts after they all queued).
        assert publisher.counts == {"flushes": 2, "emitters": 41}
    finally:
        await producer.stop()
    landed = await read_all(settings, [TopicNames(settings.namespace)[Topic.ALLOW]])
    assert sorted(landed) == sorted([b"alone", *values])


async def test_a_record_refused_for_good_fails_its_own_request_only(settings: Settings) -> None:
    await ensure_topics(settings)
    producer = make_producer(settings, client_id="test-publisher", linger_ms=0)
    await producer.start()
    try:
        publisher = GroupPublisher(producer, settings, "api")
        too_large = b"huge" + b"x" * settings.kafka.max_request_bytes
        emitters = [
            await queued(publisher, b"first"),
            await queued(publisher, too_large),
            await queued(publisher, b"third"),
        ]
        results = await asyncio.gather(
            *(publisher.flush(e) for e in emitters), return_exceptions=True
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], OutputRejected)
        assert publisher.counts == {"flushes": 1, "emitters": 3}
    finally:
        await producer.stop()
    landed = await read_all(settings, [TopicNames(settings.namespace)[Topic.ALLOW]])
    # The size is checked before anything is sent: the others' records land once.
    assert sorted(landed) == [b"first", b"third"]


async def test_a_broker_failure_fails_every_request_of_the_round(settings: Settings) -> None:
    await ensure_topics(settings)
    producer = make_producer(settings, client_id="test-publisher", linger_ms=0)
    await producer.start()
    publisher = GroupPublisher(producer, settings, "api")
    emitters = [await queued(publisher, b"a"), await queued(publisher, b"b")]
    await producer.stop()  # the producer can no longer deliver anything
    results = await asyncio.gather(*(publisher.flush(e) for e in emitters), return_exceptions=True)
    assert all(isinstance(r, TransientError) for r in results), results
    # The next request is not stuck behind the failed round.
    with pytest.raises(TransientError):
        await asyncio.wait_for(publisher.flush(await queued(publisher, b"c")), 30)
