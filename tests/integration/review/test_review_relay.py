"""The outbox relay: events reach the broker even while Redis or the feedback archive is
unavailable; the human verdict (or feedback sample) waits in the outbox (not lost, not
re-sending events) and lands once Redis (the archive) answers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardstream.contracts.events import Source, Verdict
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.review.relay import OutboxRelay
from guardstream.review.store import ReviewStore
from guardstream.runtime.kafka import ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive
from guardstream.verdict.cache import RedisVerdictCache, VerdictKey, human_verdict_key
from tests.conftest import free_port
from tests.integration.review.conftest import read_topic
from tests.support.feedback import taught_samples

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_redis_outage_holds_back_only_the_cache_write(review_settings: Settings) -> None:
    settings = review_settings
    await ensure_topics(settings)
    store = await ReviewStore.open(settings)
    producer = make_producer(settings, client_id="relay-test")
    await producer.start()
    dead = RedisVerdictCache(
        aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2),
        prefix=settings.cache_prefix,
        ttl_s=60,
        timeout_s=0.3,
    )
    live = RedisVerdictCache.from_settings(settings)
    content_key = uuid.uuid4().hex
    key = human_verdict_key("acme", content_key)
    entry = (
        b'{"v":1,"verdict":"unsafe","categories":[],"reason":"human review","source":"human",'
        b'"model":"tiny","decided_at":"2026-01-01T00:00:00Z"}'
    )
    try:
        async with store.transaction() as tx:
            await tx.enqueue("event", Topic.REVIEWS.value, "p1", b'{"n": 1}')
            await tx.enqueue("human_verdict", "verdict_cache", key, entry)
            await tx.enqueue("event", Topic.REVIEWS.value, "p1", b'{"n": 2}')
        names = TopicNames(settings.namespace)
        down = OutboxRelay(store, producer, dead, names)
        assert await down.relay_once() == 2  # both events, not the cache write
        assert await down.relay_once() == 0  # and they are not sent again
        assert [r["n"] for r in await read_topic(settings, Topic.REVIEWS, 2)] == [1, 2]
        unsent = await store.unsent(10)
        assert [u.kind for u in unsent] == ["human_verdict"]

        up = OutboxRelay(store, producer, live, names)
        assert await up.relay_once() == 1
        [found] = (await live.get_many([VerdictKey(content_key, "acme")])).values()
        assert found.source is Source.HUMAN and found.verdict is Verdict.UNSAFE
        assert await store.unsent(10) == []
        assert len(await read_topic(settings, Topic.REVIEWS, 3, within=2)) == 2
    finally:
        await dead.close()
        await live.close()
        await producer.stop()
        await store.close()


async def test_an_archive_outage_holds_back_only_the_samples(
    review_settings: Settings, tmp_path: Path
) -> None:
    settings = review_settings
    await ensure_topics(settings)
    store = await ReviewStore.open(settings)
    producer = make_producer(settings, client_id="relay-test")
    await producer.start()
    cache = RedisVerdictCache.from_settings(settings)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("the archive root is a file: every append fails")
    sample = taught_samples()[0]
    try:
        async with store.transaction() as tx:
            await tx.enqueue("event", Topic.REVIEWS.value, "p1", b'{"n": 1}')
            await tx.enqueue("feedback_sample", "archive", sample.sample_id, sample.to_json())
            await tx.enqueue("event", Topic.REVIEWS.value, "p1", b'{"n": 2}')
        names = TopicNames(settings.namespace)
        down = OutboxRelay(store, producer, cache, names, archive=Archive(blocked))
        assert await down.relay_once() == 2  # both events, not the sample
        for _ in range(3):  # every later round: nothing sent again
            assert await down.relay_once() == 0
        assert [u.kind for u in await store.unsent(10)] == ["feedback_sample"]

        archive = Archive(tmp_path / "archive")
        up = OutboxRelay(store, producer, cache, names, archive=archive)
        assert await up.relay_once() == 1
        assert [s.sample_id for s in archive.read()] == [sample.sample_id]
        assert await store.unsent(10) == []
        # Each event reached the broker exactly once through the outage.
        assert [r["n"] for r in await read_topic(settings, Topic.REVIEWS, 3, within=2)] == [1, 2]
    finally:
        await cache.close()
        await producer.stop()
        await store.close()
