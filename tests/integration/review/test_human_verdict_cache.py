"""The verdict cache prefers a human verdict over the model's for the same content key, model
writes never replace it, and a corrupt human entry is dropped like any other; every entry is
scoped to its tenant (human verdicts always, model verdicts unless the pack shares them) -
real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from guardstream.contracts.events import Source, Verdict, utcnow
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import (
    CachedVerdict,
    RedisVerdictCache,
    VerdictKey,
    human_verdict_key,
)

pytestmark = pytest.mark.integration

# Names as `contracts.Tenant` allows them.
TENANTS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)


def entry(verdict: Verdict, source: Source, reason: str = "r") -> CachedVerdict:
    return CachedVerdict(
        verdict=verdict, reason=reason, source=source, model="tiny", decided_at=utcnow()
    )


async def test_human_verdict_wins_and_sticks(settings: Settings, redis_url: str) -> None:
    cache = RedisVerdictCache.from_settings(settings)
    key, other = VerdictKey("a" * 32, "acme"), VerdictKey("b" * 32, "acme")
    try:
        await cache.put_many({key: entry(Verdict.CONTROVERSIAL, Source.MODEL)})
        await cache.put_many({other: entry(Verdict.SAFE, Source.MODEL)})
        await cache.put_human(
            human_verdict_key("acme", key.content_key), entry(Verdict.UNSAFE, Source.HUMAN)
        )
        await cache.put_many({key: entry(Verdict.SAFE, Source.MODEL)})  # a later model write
        found = await cache.get_many([key, other])
        assert found[key].source is Source.HUMAN and found[key].verdict is Verdict.UNSAFE
        assert found[other].source is Source.MODEL
        client = redis.Redis.from_url(redis_url)
        human_key = f"{settings.cache_prefix}verdict:v2:h:acme:{key.content_key}"
        assert client.ttl(human_key) > settings.redis.cache_ttl_s  # sticky: outlives model entries
        client.set(human_key, b"\xff garbage")
        found = await cache.get_many([key])
        assert found[key].source is Source.MODEL  # the corrupt human entry is a miss
        assert client.get(human_key) is None  # and is dropped
    finally:
        await cache.close()


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(owner=TENANTS, asker=TENANTS, owner_shares=st.booleans(), asker_shares=st.booleans())
def test_a_verdict_reaches_another_tenant_only_when_both_share_model_verdicts(
    settings: Settings, owner: str, asker: str, owner_shares: bool, asker_shares: bool
) -> None:
    """The owner's model verdict and its human override with a reason; what the asker (maybe
    the same tenant) finds for the same content key."""

    async def run() -> None:
        cache = RedisVerdictCache.from_settings(settings)
        content = uuid.uuid4().hex
        try:
            await cache.put_many(
                {VerdictKey(content, owner, owner_shares): entry(Verdict.SAFE, Source.MODEL)}
            )
            found = await cache.get_many([VerdictKey(content, asker, asker_shares)])
            reachable = owner == asker and owner_shares == asker_shares
            assert bool(found) is (reachable or (owner_shares and asker_shares))

            secret = f"human review corrected the model (unsafe): note {owner}"
            await cache.put_human(
                human_verdict_key(owner, content), entry(Verdict.UNSAFE, Source.HUMAN, secret)
            )
            found = await cache.get_many([VerdictKey(content, asker, asker_shares)])
            human = [v for v in found.values() if v.source is Source.HUMAN]
            # Shared or not, a reviewer's verdict and words stay with the owner's posts.
            assert bool(human) is (owner == asker)
            assert all(secret not in v.reason for v in found.values()) or owner == asker
        finally:
            await cache.close()

    asyncio.run(run())
