"""Triage against the real broker and Redis under policy packs of its own: per-pack verdict
lifetimes (`cache_ttl_s`) and whose model verdicts a tenant may reuse (`share_model_verdicts`).
No scorer runs: a miss shows up as a score request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from guardstream.contracts.events import ScoreRequest, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send, send_and_wait
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import (
    CachedVerdict,
    RedisVerdictCache,
    VerdictKey,
    human_verdict_key,
)
from guardstream.verdict.intake import triage_record
from tests.integration.conftest import Pipeline, in_process
from tests.support.oracle import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PACKS = """
id: default
version: "1"
tenants: ["*"]
cache_ttl_s: 86400
share_model_verdicts: true
---
id: fresh-news
version: "1"
tenants: [news]
cache_ttl_s: 300
share_model_verdicts: true
---
id: private
version: "1"
tenants: [vault, vault-2]
cache_ttl_s: 3600
"""
TEXT = "Breaking: the bridge on Main Street is closed until Friday, take the ferry instead."


@pytest.fixture
def pack_settings(settings: Settings, tmp_path: Path) -> Settings:
    (tmp_path / "packs.yaml").write_text(PACKS)
    return settings.replace(policy={"dir": tmp_path})


@pytest.fixture
async def triage_only(pack_settings: Settings) -> AsyncIterator[Pipeline]:
    async with in_process(pack_settings, None, "triage") as state:  # type: ignore[arg-type]
        yield state


async def seed(settings: Settings, tenant: str, age: timedelta, source: Source) -> str:
    """Cache a verdict for TEXT as the scorer would have, `age` ago; returns its key."""
    policies = load_registry(settings.policy.dir)
    item = triage_record(
        new_post(TEXT, tenant=tenant).to_json(),
        max_text_chars=settings.process.max_text_chars,
        model=served_model_id(settings),
        adapter=None,
        policies=policies,
    )
    cache = RedisVerdictCache.from_settings(settings)
    try:
        await cache.put_many(
            {
                item.verdict_key: CachedVerdict(
                    verdict=Verdict.SAFE,
                    confidence=0.97,
                    reason="Qwen3Guard: Safe",
                    source=source,
                    model=served_model_id(settings),
                    decided_at=utcnow() - age,
                )
            }
        )
    finally:
        await cache.close()
    return item.content_key


async def wait_for_score_requests(
    settings: Settings, count: int, timeout_s: float = 60
) -> list[ScoreRequest]:
    topic = TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = [ScoreRequest.from_json(raw) for raw in await read_all(settings, [topic])]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.3)


async def test_each_pack_reuses_only_verdicts_younger_than_its_cache_ttl(
    triage_only: Pipeline, redis_url: str
) -> None:
    settings = triage_only.settings
    key = await seed(settings, "news", timedelta(minutes=10), Source.MODEL)

    # The default pack keeps verdicts a day: ten minutes old is reused.
    older = new_post(TEXT, tenant="acme")
    decided = [d async for _, d in send_and_wait(settings, [older], timeout_s=60)]
    assert [(d.source, d.policy, d.content_key) for d in decided] == [
        (Source.CACHE, "default@1", key)
    ]

    # The news pack keeps them five minutes: the same entry is too old, so the post is scored,
    # and the entry is dropped so that the scorer's own cache check cannot hand it back.
    fresh = new_post(TEXT, tenant="news")
    await send(settings, [fresh])
    requests = await wait_for_score_requests(settings, 1)
    assert [(r.post_id, r.content_key, r.policy) for r in requests] == [
        (fresh.post_id, key, "fresh-news@1")
    ]
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.exists(f"{settings.cache_prefix}verdict:v2:m:*:{key}") == 0
    finally:
        await client.aclose()
    assert triage_only.triage.counts["stale"] == 1
    assert triage_only.triage.counts["cache_hit"] == 1


async def test_a_human_verdict_is_reused_however_old(triage_only: Pipeline) -> None:
    settings = triage_only.settings
    key = await seed(settings, "news", timedelta(days=30), Source.HUMAN)
    post = new_post(TEXT, tenant="news")
    decided = [d async for _, d in send_and_wait(settings, [post], timeout_s=60)]
    assert [(d.source, d.content_key) for d in decided] == [(Source.CACHE, key)]
    assert triage_only.triage.counts["stale"] == 0


async def test_entries_live_as_long_as_the_longest_lived_pack_reuses_them(
    pack_settings: Settings, redis_url: str
) -> None:
    policies = load_registry(pack_settings.policy.dir)
    pack_ttls = [p.cache_ttl_s for p in policies.packs]
    cache = RedisVerdictCache.for_packs(pack_settings, pack_ttls)
    capped = RedisVerdictCache.for_packs(
        pack_settings.replace(redis={"cache_ttl_s": 600}), pack_ttls
    )
    entry = CachedVerdict(
        verdict=Verdict.SAFE,
        reason="Qwen3Guard: Safe",
        source=Source.MODEL,
        model="m",
        decided_at=utcnow(),
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        await cache.put_many({VerdictKey("a" * 32, "acme"): entry})
        await capped.put_many({VerdictKey("b" * 32, "acme"): entry})
        prefix = f"{pack_settings.cache_prefix}verdict:v2:m:acme:"
        assert 86_000 < await client.ttl(prefix + "a" * 32) <= 86_400  # the longest pack
        assert 500 < await client.ttl(prefix + "b" * 32) <= 600  # GUARDSTREAM_CACHE_TTL_S caps
        assert orjson.loads(await client.get(prefix + "a" * 32))["verdict"] == "safe"
        await client.delete(prefix + "a" * 32, prefix + "b" * 32)
    finally:
        await client.aclose()
        await cache.close()
        await capped.close()


async def test_without_sharing_a_tenant_never_reuses_another_tenants_model_verdict(
    triage_only: Pipeline,
) -> None:
    """The `private` pack keeps the default (`share_model_verdicts: false`): tenant vault-2's
    identical post is scored, not told that vault saw the text; vault's own repost is a hit."""
    settings = triage_only.settings
    key = await seed(settings, "vault", timedelta(minutes=1), Source.MODEL)
    other = new_post(TEXT, tenant="vault-2")
    await send(settings, [other])
    requests = await wait_for_score_requests(settings, 1)
    assert [(r.post_id, r.tenant, r.content_key) for r in requests] == [
        (other.post_id, "vault-2", key)
    ]
    own = new_post(TEXT, tenant="vault")
    decided = [d async for _, d in send_and_wait(settings, [own], timeout_s=60)]
    assert [(d.post_id, d.source, d.content_key) for d in decided] == [
        (own.post_id, Source.CACHE, key)
    ]
    assert triage_only.triage.counts["cache_hit"] == 1


async def test_a_human_verdict_and_its_reason_stay_with_their_tenant(
    triage_only: Pipeline,
) -> None:
    """Even where model verdicts are shared (the default pack here), a reviewer's verdict for
    tenant acme - with the words of its reason - never decides another tenant's post."""
    settings = triage_only.settings
    key = await seed(settings, "news", timedelta(minutes=1), Source.MODEL)  # shared, safe
    cache = RedisVerdictCache.from_settings(settings)
    secret = "human review corrected the model (unsafe): acme's own note"
    try:
        await cache.put_human(
            human_verdict_key("acme", key),
            CachedVerdict(
                verdict=Verdict.UNSAFE,
                reason=secret,
                source=Source.HUMAN,
                model=served_model_id(settings),
                decided_at=utcnow(),
            ),
        )
    finally:
        await cache.close()
    acme, beta = new_post(TEXT, tenant="acme"), new_post(TEXT, tenant="beta")
    decided = {d.post_id: d async for _, d in send_and_wait(settings, [acme, beta], 60)}
    assert decided[acme.post_id].verdict is Verdict.UNSAFE
    assert secret in decided[acme.post_id].reason
    assert decided[beta.post_id].verdict is Verdict.SAFE  # the shared model verdict
    assert "note" not in decided[beta.post_id].reason


async def test_another_tenants_post_with_the_same_event_id_is_not_a_replay(
    triage_only: Pipeline,
) -> None:
    """Producers choose event ids: vault-2 reusing vault's event id must get its own handling,
    never vault's recorded decision re-emitted as a replay (the journal names the tenant)."""
    settings = triage_only.settings
    await seed(settings, "vault", timedelta(minutes=1), Source.MODEL)
    own = new_post(TEXT, tenant="vault")
    decided = [d async for _, d in send_and_wait(settings, [own], timeout_s=60)]
    assert [(d.post_id, d.source) for d in decided] == [(own.post_id, Source.CACHE)]
    copycat = new_post(TEXT, tenant="vault-2").model_copy(update={"event_id": own.event_id})
    await send(settings, [copycat])
    requests = await wait_for_score_requests(settings, 1)
    assert [(r.post_id, r.tenant, r.post_event_id) for r in requests] == [
        (copycat.post_id, "vault-2", own.event_id)
    ]
    assert triage_only.triage.counts["replayed"] == 0
