"""Cascade: the first-tier scorer decides what it is sure of and escalates the rest, on the
escalations topic, to a second-tier scorer that decides them.

Both tiers run the session's tiny checkpoint (one model is all the test machine has); the
threshold is put between two taught posts' measured confidences, so exactly one escalates.
"""

from __future__ import annotations

import asyncio

import pytest

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send_and_wait
from guardstream.model.tiny import TEACHING_SET
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from guardstream.scorer import main as scorer_main
from guardstream.scorer.output import label_confidence, parse_answer
from guardstream.scorer.service import Scorer
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.triage import main as triage_main
from tests.support.oracle import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def confidence(engine: VllmGuardEngine, text: str) -> float:
    raw = await engine.assess_two_phase([{"role": "user", "content": text}], f"probe-{text[:8]}")
    label = parse_answer(raw.text).label
    assert label is not None
    value = label_confidence(label, raw.label_logprobs)
    assert value is not None
    return round(value, 6)  # as the scorer records it


async def test_unsure_verdicts_go_to_the_larger_tier(
    settings: Settings, engine: VllmGuardEngine
) -> None:
    prompts = [lesson.messages[0][1] for lesson in TEACHING_SET if len(lesson.messages) == 1]
    scored = sorted([(await confidence(engine, text), text) for text in prompts])
    (low, unsure), (high, sure) = scored[0], scored[-1]
    assert low < high, scored
    threshold = (low + high) / 2

    first = settings.replace(scorer={"cascade_escalate_below": threshold})
    second = settings.replace(scorer={"source": "escalations"})
    await ensure_topics(settings)
    tiers: dict[str, Scorer] = {}
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(triage_main.run(settings, stop)),
        asyncio.create_task(
            scorer_main.run(first, stop, engine=engine, expose=lambda s: tiers.__setitem__("1", s))
        ),
        asyncio.create_task(
            scorer_main.run(second, stop, engine=engine, expose=lambda s: tiers.__setitem__("2", s))
        ),
    ]
    try:
        posts = [new_post(sure, tenant="acme"), new_post(unsure, tenant="acme")]
        decided = {d.post_id: d async for _, d in send_and_wait(settings, posts, 240)}
    finally:
        stop.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes

    assert set(decided) == {p.post_id for p in posts}
    assert decided[posts[0].post_id].confidence == high
    assert decided[posts[1].post_id].confidence == low  # decided by the second tier
    assert tiers["1"].counts["escalated"] == 1
    assert tiers["2"].counts["scored"] == 1 and tiers["2"].counts["escalated"] == 0
    escalated = await read_all(settings, [TopicNames(settings.namespace)[Topic.ESCALATIONS]])
    assert len(escalated) == 1 and posts[1].post_id.encode() in escalated[0]


def test_the_last_tier_cannot_escalate(settings: Settings) -> None:
    both = settings.replace(scorer={"source": "escalations", "cascade_escalate_below": 0.9})
    with pytest.raises(ValueError, match="last one"):
        asyncio.run(scorer_main.run(both, asyncio.Event()))
