"""A/B through the real broker and Redis: a tenant's pack sends 40 % of its authors to a
candidate pack. Triage decides cached verdicts (seeded as the scorer would have left them);
each decision lands on its arm's action topic, names its arm and its pack, every post of one
author lands in one arm, and the split is the pure function's (`policy.experiment`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardstream.contracts.events import Action, Arm, Decision, Source, Verdict, utcnow
from guardstream.contracts.topics import TopicNames
from guardstream.devtools.produce import new_post, send_and_wait
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.policy.experiment import Experiment, arm_of
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache
from guardstream.verdict.decisions import ACTION_TOPIC
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
tenants: [market]
experiment: {candidate: market-next, percent: 40}
---
id: market-next
version: "2"
tenants: [market]
candidate: true
rules:
  - id: unsafe-remove
    verdict: unsafe
    action: remove
"""
UNSAFE = "Guaranteed 25% monthly returns, principal protected, wire today to join."
EXPERIMENT = Experiment(candidate="market-next", percent=40)


@pytest.fixture
async def triage_only(settings: Settings, tmp_path: Path) -> AsyncIterator[Pipeline]:
    (tmp_path / "packs.yaml").write_text(PACKS)
    # Redis answering late would read as a cache miss (no scorer here): this is about arms.
    packed = settings.replace(policy={"dir": tmp_path}, redis={"timeout_ms": 5000})
    async with in_process(packed, None, "triage") as state:  # type: ignore[arg-type]
        yield state


async def seed(settings: Settings, text: str, tenant: str = "market") -> None:
    """The model's `unsafe` on `text`, cached as the scorer would have (both arms' packs
    render the same prompt, so both arms share the content key)."""
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
                    verdict=Verdict.UNSAFE,
                    confidence=0.97,
                    categories=("Non-violent Illegal Acts",),
                    reason="Qwen3Guard: Unsafe",
                    source=Source.MODEL,
                    model=served_model_id(settings),
                    decided_at=utcnow(),
                )
            }
        )
    finally:
        await cache.close()


async def test_each_author_s_posts_go_to_one_arm_and_name_it(triage_only: Pipeline) -> None:
    settings = triage_only.settings
    await seed(settings, UNSAFE)
    await seed(settings, UNSAFE, tenant="elsewhere")
    authors = [f"author-{i}" for i in range(30)]
    # Every author posts twice; two ids with a space, an invisible and non-Latin characters.
    authors += ["a b\u200b", "作者-١٢"]
    posts = [new_post(UNSAFE, tenant="market", author_id=a) for a in authors * 2]
    by_post = {post.post_id: post.author_id for post in posts}
    names = TopicNames(settings.namespace)
    decided: dict[str, tuple[str, Decision]] = {}
    async for topic, decision in send_and_wait(settings, posts, timeout_s=90):
        decided[decision.post_id] = (topic, decision)
    assert len(decided) == len(posts)

    arms: dict[str, set[Arm | None]] = {}
    for post_id, (topic, decision) in decided.items():
        author = by_post[post_id]
        arms.setdefault(author, set()).add(decision.arm)
        expected = arm_of(EXPERIMENT, "market", author)
        assert decision.arm is expected
        if expected is Arm.CANDIDATE:
            assert (decision.policy, decision.action) == ("market-next@2", Action.REMOVE)
            assert decision.rule == "rule:unsafe-remove"
        else:
            assert (decision.policy, decision.action) == ("market@1", Action.BLOCK)
        assert topic == names[ACTION_TOPIC[decision.action]]
    assert all(len(seen) == 1 for seen in arms.values())  # one author, one arm
    per_arm = Counter(next(iter(seen)) for seen in arms.values())
    assert per_arm[Arm.CANDIDATE] and per_arm[Arm.CONTROL]  # both arms served

    # Another tenant's posts run no experiment: no arm.
    (_, other), *_ = [
        d async for d in send_and_wait(settings, [new_post(UNSAFE, tenant="elsewhere")], 60)
    ]
    assert (other.arm, other.policy, other.action) == (None, "default@1", Action.BLOCK)
