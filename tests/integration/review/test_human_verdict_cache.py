"""The verdict cache prefers a human verdict over the model's for the same content key, model
writes never replace it, and a corrupt human entry is dropped like any other (real Redis)."""

from __future__ import annotations

import pytest
import redis

from guardstream.core.cache import CachedVerdict, RedisVerdictCache
from guardstream.core.contracts import Source, Verdict, utcnow
from guardstream.core.settings import Settings

pytestmark = pytest.mark.integration


def entry(verdict: Verdict, source: Source) -> CachedVerdict:
    return CachedVerdict(
        verdict=verdict, reason="r", source=source, model="tiny", decided_at=utcnow()
    )


async def test_human_verdict_wins_and_sticks(settings: Settings, redis_url: str) -> None:
    cache = RedisVerdictCache.from_settings(settings)
    key, other = "a" * 32, "b" * 32
    try:
        await cache.put_many({key: entry(Verdict.CONTROVERSIAL, Source.MODEL)})
        await cache.put_many({other: entry(Verdict.SAFE, Source.MODEL)})
        await cache.put_human(key, entry(Verdict.UNSAFE, Source.HUMAN))
        await cache.put_many({key: entry(Verdict.SAFE, Source.MODEL)})  # a later model write
        found = await cache.get_many([key, other])
        assert found[key].source is Source.HUMAN and found[key].verdict is Verdict.UNSAFE
        assert found[other].source is Source.MODEL
        client = redis.Redis.from_url(redis_url)
        human_key = f"{settings.cache_prefix}verdict:human:{key}"
        assert client.ttl(human_key) > settings.cache_ttl_s  # sticky: outlives model entries
        client.set(human_key, b"\xff garbage")
        found = await cache.get_many([key])
        assert found[key].source is Source.MODEL  # the corrupt human entry is a miss
        assert client.get(human_key) is None  # and is dropped
    finally:
        await cache.close()
