"""Graded actions and author history through the real broker and Redis: triage decides cached
verdicts under a pack whose rules read the author's history; each decision lands on its
action's topic (`hold` on the review topic), names the rule and the figures it read, and the
history of one author (not another's, not another tenant's) drives the next rule. No scorer
runs: every text is seeded in the verdict cache as the scorer would have left it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardstream.contracts.events import Action, Decision, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send_and_wait
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.verdict.author_history import RedisAuthorHistory, forget
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache
from guardstream.verdict.decisions import ACTION_TOPIC
from guardstream.verdict.erasure import author_key
from guardstream.verdict.intake import triage_record
from tests.integration.conftest import Pipeline, in_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PACKS = """
id: default
version: "1"
tenants: ["*"]
---
id: market
version: "1"
tenants: [market, market-2]
rules:
  - id: repeat-remove
    verdict: unsafe
    author: {unsafe_7d: {at_least: 2}}
    action: remove
  - id: first-unsafe-hold
    verdict: unsafe
    action: hold
  - id: clean-warn
    verdict: controversial
    confidence: {at_least: 0.8}
    author: {controversial_7d: {below: 1}}
    action: warn
  - id: borderline-limit
    verdict: controversial
    confidence: {at_least: 0.8}
    action: limit
"""
UNSAFE = "Guaranteed 25% monthly returns, principal protected, wire today to join."
BORDERLINE = "This fund has never lost money, ask me privately how to get in early."


@pytest.fixture
def pack_settings(settings: Settings, tmp_path: Path) -> Settings:
    (tmp_path / "packs.yaml").write_text(PACKS)
    # Redis answering late (a loaded CI machine) would read as a cache miss: this test is
    # about rules, not about failing open.
    return settings.replace(policy={"dir": tmp_path}, redis={"timeout_ms": 5000})


@pytest.fixture
async def triage_only(pack_settings: Settings) -> AsyncIterator[Pipeline]:
    async with in_process(pack_settings, None, "triage") as state:  # type: ignore[arg-type]
        yield state


async def seed(settings: Settings, tenant: str, text: str, verdict: Verdict, conf: float) -> None:
    """Cache the model's verdict on `text` for `tenant`, as the scorer would have."""
    item = triage_record(
        new_post(text, tenant=tenant).to_json(),
        max_text_chars=settings.process.max_text_chars,
        model=served_model_id(settings),
        adapter=None,
        policies=load_registry(settings.policy.dir),
    )
    cache = RedisVerdictCache.from_settings(settings)
    try:
        await cache.put_many(
            {
                item.verdict_key: CachedVerdict(
                    verdict=verdict,
                    confidence=conf,
                    categories=("Non-violent Illegal Acts",) if verdict is Verdict.UNSAFE else (),
                    reason=f"Qwen3Guard: {verdict.value}",
                    source=Source.MODEL,
                    model=served_model_id(settings),
                    decided_at=utcnow(),
                )
            }
        )
    finally:
        await cache.close()


async def decide(settings: Settings, text: str, author: str, tenant: str = "market") -> Decision:
    """One post, its decision once on the broker (history is updated after each batch)."""
    post = new_post(text, tenant=tenant, author_id=author)
    names = TopicNames(settings.namespace)
    (topic, decision), *_ = [d async for d in send_and_wait(settings, [post], timeout_s=60)]
    assert topic == names[ACTION_TOPIC[decision.action]]
    return decision


async def test_graded_actions_reach_their_topics_and_history_drives_the_rules(
    triage_only: Pipeline, redis_url: str
) -> None:
    settings = triage_only.settings
    for tenant in ("market", "market-2"):
        await seed(settings, tenant, UNSAFE, Verdict.UNSAFE, 0.97)
        await seed(settings, tenant, BORDERLINE, Verdict.CONTROVERSIAL, 0.9)

    # A clean author's borderline post is published with a warning; the second one, limited.
    first = await decide(settings, BORDERLINE, "alice")
    assert (first.action, first.rule) == (Action.WARN, "rule:clean-warn")
    assert first.author_history is not None and first.author_history.controversial_7d == 0
    second = await decide(settings, BORDERLINE, "alice")
    assert (second.action, second.rule) == (Action.LIMIT, "rule:borderline-limit")
    assert second.author_history is not None and second.author_history.controversial_7d == 1

    # Unsafe: held (on the review topic) twice, then removed as a repeat offender.
    held = [await decide(settings, UNSAFE, "alice") for _ in range(2)]
    assert [(d.action, d.rule) for d in held] == [(Action.HOLD, "rule:first-unsafe-hold")] * 2
    removed = await decide(settings, UNSAFE, "alice")
    assert (removed.action, removed.rule) == (Action.REMOVE, "rule:repeat-remove")
    assert removed.author_history is not None and removed.author_history.unsafe_7d == 2
    assert "unsafe_7d=2" in removed.reason

    # Another author, and the same author id at another tenant, start clean.
    assert (await decide(settings, UNSAFE, "bob")).action is Action.HOLD
    assert (await decide(settings, UNSAFE, "alice", tenant="market-2")).action is Action.HOLD

    # Keys hold neither the author id nor another tenant's data; every key expires.
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() async for k in client.scan_iter(f"{settings.cache_prefix}author:*")]
        assert keys and not any("alice" in k or "bob" in k for k in keys)
        assert any(author_key("market", "alice") in k for k in keys)
        assert all([await client.ttl(k) > 0 for k in keys])
    finally:
        await client.aclose()

    # A person overturning one of the holds takes it back out; erasure forgets the rest.
    history = RedisAuthorHistory.from_settings(settings)
    try:
        await history.record_review("market", held[0].decision_id, Verdict.SAFE, utcnow())
        figures = await history.figures_many([("market", "alice")], time.time())
        assert figures[("market", "alice")].unsafe_7d == 2  # 3 unsafe, one overturned
        await history.record_review("market", held[1].decision_id, Verdict.UNSAFE, utcnow())
        confirmed = await history.figures_for_decision("market", held[1].decision_id, time.time())
        assert confirmed is not None and confirmed.confirmed_unsafe_7d == 1
        assert await forget(settings, "market", "alice") == 3
        assert await forget(settings, "market", "alice") == 0  # erasing twice is harmless
        figures = await history.figures_many([("market", "alice")], time.time())
        assert figures[("market", "alice")].unsafe_30d == 0
        kept = await history.figures_many([("market-2", "alice")], time.time())
        assert kept[("market-2", "alice")].unsafe_7d == 1  # the other tenant's is its own
    finally:
        await history.close()
    assert (await decide(settings, UNSAFE, "alice")).action is Action.HOLD
    # The hold travelled on the review topic, where the console and the SLA timer read it.
    assert ACTION_TOPIC[Action.HOLD] is Topic.REVIEW


SCORED_PACKS = """
id: default
version: "1"
tenants: ["*"]
---
id: watched
version: "1"
tenants: [watched]
rules:
  - id: every-known-author-held
    author: {controversial_30d: {below: 1000000}}
    action: hold
"""


async def test_the_scorer_reads_and_counts_the_author_s_history(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    """Misses go through the real scorer (tiny checkpoint on vLLM): the score request carries
    the author, the scorer reads the history for the pack's rule (every decision held, the
    figures on it) and counts what the model called unsafe or controversial."""
    (tmp_path / "packs.yaml").write_text(SCORED_PACKS)
    scored = settings.replace(policy={"dir": tmp_path}, redis={"timeout_ms": 5000})
    texts = [f"{i}: my neighbour keeps posting about the election results" for i in range(3)]
    async with in_process(scored, engine, "triage", "scorer") as running:
        posts = [new_post(t, tenant="watched", author_id="carol") for t in texts]
        decided = {d.post_id: d async for _, d in send_and_wait(running.settings, posts, 120)}
    assert len(decided) == 3
    for decision in decided.values():
        assert (decision.action, decision.rule) == (Action.HOLD, "rule:every-known-author-held")
        assert decision.source is Source.MODEL and decision.author_history is not None
    counted = sum(d.verdict is not Verdict.SAFE for d in decided.values())
    history = RedisAuthorHistory.from_settings(scored)
    try:
        figures = (await history.figures_many([("watched", "carol")], time.time()))[
            ("watched", "carol")
        ]
    finally:
        await history.close()
    assert figures.unsafe_30d + figures.controversial_30d == counted
