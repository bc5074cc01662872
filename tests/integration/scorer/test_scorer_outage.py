"""RELIABILITY.md scenario 8's policy half: the scorer stops answering, and each post's policy
pack decides. Real broker, Redis, triage and (for the recovery) the real vLLM scorer; the
outage is real too: no scorer process runs until the test starts one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guardstream.contracts.events import Action, Decision, Post, ScoreRequest, Source, Verdict
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.integration.conftest import in_process
from tests.support.oracle import assert_invariants, read_all, wait_for_decisions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PACKS = """
id: default
version: "1"
tenants: ["*"]
scorer_unavailable: fail_closed
---
id: open-forum
version: "1"
tenants: [openco]
scorer_unavailable: fail_open
"""
AFTER_S = 2.0


@pytest.fixture
def outage_settings(settings: Settings, tmp_path: Path) -> Settings:
    (tmp_path / "packs.yaml").write_text(PACKS)
    return settings.replace(
        policy={"dir": tmp_path}, triage={"scorer_unavailable_after_s": AFTER_S}
    )


async def requests_for(settings: Settings, posts: list[Post], timeout_s: float = 60) -> None:
    """Wait until each post has a score request on the topic."""
    topic = TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]
    wanted = {p.post_id for p in posts}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        raw = await read_all(settings, [topic])
        if wanted <= {ScoreRequest.from_json(r).post_id for r in raw}:
            return
        assert asyncio.get_running_loop().time() < deadline, "no score request"
        await asyncio.sleep(0.3)


async def test_fail_closed_packs_send_new_misses_to_review_fail_open_packs_wait(
    outage_settings: Settings, engine: VllmGuardEngine
) -> None:
    settings = outage_settings
    before = new_post("Has anyone tried the new ramen place near the station?", tenant="acme")
    closed = new_post("Selling my old bike, barely used, message me for details.", tenant="acme")
    opened = new_post("Our forum meetup moves to Thursday evening this week.", tenant="openco")
    after = new_post("Does the library open early on public holidays?", tenant="acme")

    async with in_process(settings, None, "triage") as triage:  # type: ignore[arg-type]
        await send(settings, [before])
        await requests_for(settings, [before])  # queued; nobody answers it
        for _ in range(300):  # past the window, and a poll of the scorer's offsets
            if triage.triage.scorer_unavailable:
                break
            await asyncio.sleep(0.1)
        assert triage.triage.scorer_unavailable

        await send(settings, [closed, opened])
        verdicts = await wait_for_decisions(settings, {closed.post_id}, timeout_s=60)
        ((raw,),) = [v for (post, _), v in verdicts.decisions.items() if post == closed.post_id]

        decision = Decision.from_json(raw)
        assert (decision.action, decision.source, decision.verdict) == (
            Action.REVIEW,
            Source.RULE,
            Verdict.CONTROVERSIAL,
        )
        assert decision.rule == "scorer_unavailable:fail_closed"
        assert decision.confidence is None and decision.categories == ()
        assert decision.reason.startswith("not scored: a score request has waited")
        assert "default@1 fails closed" in decision.reason
        # The fail-open pack's post waits for the scorer like the one sent before the outage.
        await requests_for(settings, [opened])
        assert verdicts.decided_posts() == {closed.post_id}
        assert triage.triage.counts["unscored"] == 1

        async with in_process(settings, engine, "scorer"):
            verdicts = await wait_for_decisions(
                settings, {before.post_id, opened.post_id}, timeout_s=180
            )
            assert {before.post_id, opened.post_id} <= verdicts.decided_posts()
            for _ in range(300):  # the scorer's commits are seen: answering again
                if not triage.triage.scorer_unavailable:
                    break
                await asyncio.sleep(0.1)
            assert not triage.triage.scorer_unavailable
            await send(settings, [after])
            verdicts = await wait_for_decisions(settings, {after.post_id}, timeout_s=180)

    everyone = {p.post_id for p in (before, closed, opened, after)}
    assert_invariants(verdicts, everyone, max_emissions_per_post=1)
    sources = {
        post: Decision.from_json(next(iter(raw))).source
        for (post, _), raw in verdicts.decisions.items()
    }
    assert sources == {
        before.post_id: Source.MODEL,
        closed.post_id: Source.RULE,
        opened.post_id: Source.MODEL,
        after.post_id: Source.MODEL,
    }
