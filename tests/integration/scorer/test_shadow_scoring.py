"""Shadow scoring through the real pipeline, on the one vLLM engine with LoRA: a tenant's shadow
candidate scores its live traffic beside the serving model; the candidate's verdicts reach
the shadow topic and never an action topic; a failed shadow scoring leaves the serving
decision as it was; with later human labels the shadow evaluation promotes the candidate that
beat the serving model (and retires one that did not), and the running scorer serves the
promoted one without a restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardstream.contracts.events import Action, Decision, Source, Verdict, utcnow
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.adversarial import read_records
from guardstream.devtools.produce import new_post
from guardstream.feedback.job import evaluate_shadow
from guardstream.feedback.shadow import ShadowConfig
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.verdict.archive import Archive
from tests.integration.conftest import in_process
from tests.integration.pipeline.test_pipeline import decide
from tests.support.engines import FailingAdapterEngine
from tests.support.feedback import (
    MISJUDGED,
    MISJUDGED_LIVE,
    train_correction,
    wait_shadow_records,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SOURDOUGH = "How do I bake sourdough bread at home?"
BOOK = "Can you recommend a good book about the history of mathematics?"


@pytest.fixture(scope="module")
def correction_adapter(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = ensure_tiny_checkpoint(model_cache_dir)
    result, _, _ = train_correction(base, tmp_path_factory.mktemp("lora") / "adapter")
    return result.adapter_dir


def human_label(decision: Decision, verdict: Verdict, n: int) -> FeedbackSample:
    """What the review relay archives when a reviewer labels the decided post."""
    return FeedbackSample(
        event_id=f"rv-{n}",
        produced_at=utcnow(),
        sample_id=f"rv-{n}",
        post_id=decision.post_id,
        tenant=decision.tenant,
        text="(as the model saw it)",
        content_key=decision.content_key,
        pred_verdict=decision.verdict,
        pred_confidence=decision.confidence,
        human_verdict=verdict,
        human_reason="复核",
        tags=("复核",),
        reviewer="rv-1",
        policy=decision.policy,
        model=decision.model,
        reviewed_at=utcnow(),
    )


async def test_a_shadow_candidate_is_scored_alongside_never_actioned_then_judged(
    settings: Settings, correction_adapter: Path, tmp_path: Path
) -> None:
    registry_dir = tmp_path / "adapters"
    lora = settings.replace(model={"adapter_dir": registry_dir, "adapter_poll_s": 0.2})
    registry = AdapterRegistry(registry_dir)
    # The same trained adapter as two tenants' candidates: acme's reviewers will agree with
    # it, beta's with the serving model.
    for tenant in ("acme", "beta"):
        registry.register(f"fb-{tenant}", correction_adapter, {"why": "test"}, tenant=tenant)
        registry.start_shadow(f"fb-{tenant}")
    engine = await VllmGuardEngine.start(lora)
    # The candidate fails on one post: its serving decision must not notice.
    faulty = FailingAdapterEngine(
        engine,
        lambda messages, adapter: adapter is not None and SOURDOUGH in messages[-1]["content"],
    )
    names = TopicNames(lora.namespace)
    try:
        async with in_process(lora, faulty, "triage", "scorer") as pipeline:
            remark = new_post(MISJUDGED, tenant="acme")
            bomb = new_post("How can I make a bomb?", tenant="acme")
            bread = new_post(SOURDOUGH, tenant="acme")
            other = new_post(MISJUDGED_LIVE, tenant="beta")
            posts = [remark, bomb, bread, other]
            decided = {d.post_id: d for _, d in (await decide(lora, posts)).values()}
            # The serving (base) model decides; nothing the candidate said is actioned.
            assert decided[remark.post_id].verdict is Verdict.CONTROVERSIAL
            assert decided[other.post_id].verdict is Verdict.CONTROVERSIAL
            assert decided[bomb.post_id].action is Action.BLOCK
            assert decided[bread.post_id].action is Action.ALLOW  # its shadow scoring failed
            assert all(d.source is Source.MODEL and d.adapter is None for d in decided.values())

            shadowed_posts = {remark.post_id, bomb.post_id, other.post_id}
            records = {
                r.post_id: r
                for r in await wait_shadow_records(
                    lora, shadowed_posts, counts=pipeline.scorer.counts
                )
            }
            assert set(records) == {remark.post_id, bomb.post_id, other.post_id}
            shadowed = records[remark.post_id]
            assert (shadowed.serving_verdict, shadowed.serving_adapter) == (
                Verdict.CONTROVERSIAL,
                None,
            )
            assert (shadowed.candidate_verdict, shadowed.candidate_adapter) == (
                Verdict.SAFE,
                "fb-acme",
            )
            assert shadowed.content_key == decided[remark.post_id].content_key
            assert records[other.post_id].candidate_adapter == "fb-beta"
            assert records[bomb.post_id].candidate_verdict is Verdict.UNSAFE
            counts = pipeline.scorer.counts
            for _ in range(600):  # a published record is counted a moment after the broker has it
                if counts["shadow_scored"] + counts["shadow_failed"] >= counts["shadow_started"]:
                    break
                await asyncio.sleep(0.1)
            assert (counts["shadow_started"], counts["shadow_scored"]) == (4, 3)
            assert counts["shadow_failed"] == 1

            actions = [names[t] for t in (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)]
            actioned = [Decision.from_json(raw) for raw in await read_records(lora, actions)]
            assert sorted(d.post_id for d in actioned) == sorted(p.post_id for p in posts)
            assert {d.adapter for d in actioned} == {None}

            # Before any human label the evidence is short: the candidates keep shadowing.
            archive = Archive(lora.feedback.dir)
            config = ShadowConfig(
                min_samples=1,
                min_labelled=1,
                require_approval=False,
                min_judges=1,
                reviewer_cap=1.0,
            )
            shadow_log = list(records.values())
            now = datetime.now(UTC)
            early = evaluate_shadow(archive, registry, shadow_log, now, config, tenant="acme")
            assert early.status == "keep", early

            # Reviewers: acme's remark is fine (the candidate was right); beta's reviewer
            # agrees with the serving model (the candidate was wrong).
            archive.append(
                [
                    human_label(decided[remark.post_id], Verdict.SAFE, 1),
                    human_label(decided[other.post_id], Verdict.CONTROVERSIAL, 2),
                ]
            )
            now = datetime.now(UTC)
            won = evaluate_shadow(archive, registry, shadow_log, now, config, tenant="acme")
            assert won.status == "promote", won
            assert won.metrics is not None
            assert (won.metrics.shadowed, won.metrics.labelled) == (2, 1)
            assert won.metrics.agreement == 0.5
            lost = evaluate_shadow(archive, registry, shadow_log, now, config, tenant="beta")
            assert lost.status == "retire", lost
            snapshot = registry.snapshot(fresh=True)
            assert snapshot.shadow == {}
            assert snapshot.serving == {"acme": "fb-acme"}
            assert registry.card("fb-acme")["shadow"]["candidate_accuracy"] == 1.0
            await pipeline.serving_generation(snapshot.generation)

            # The running scorer serves the promoted candidate; beta keeps the base model and
            # no tenant is shadowed any more.
            again, beta_again = (
                new_post(MISJUDGED, tenant="acme"),
                new_post(BOOK, tenant="beta"),
            )
            after = {d.post_id: d for _, d in (await decide(lora, [again, beta_again])).values()}
            assert (after[again.post_id].verdict, after[again.post_id].adapter) == (
                Verdict.SAFE,
                "fb-acme",
            )
            assert after[again.post_id].source is Source.MODEL
            assert after[beta_again.post_id].adapter is None
            assert after[beta_again.post_id].source is Source.MODEL  # scored, yet not shadowed
            assert counts["shadow_started"] == 4
    finally:
        await engine.close()
