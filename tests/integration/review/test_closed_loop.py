"""The proof that the loop closes (the seeds' 数据回流 → LoRA 微调 → 上线).

On real parts — tansu, Redis, PostgreSQL, the vLLM engine with LoRA on the tiny checkpoint:
a post the model misjudges (the seeds' own technical remark, flagged `controversial`) reaches
the review console; reviewers correct it (and a second wording of it) through the console API;
the reviews are archived; the weekly cycle curates, trains a LoRA adapter, evaluates it against
the serving model on held-out corrections and puts it in shadow; the running scorer scores live
traffic with it beside the serving model without actioning its verdicts; a reviewer labels a
third wording of the remark the serving model sent to review; the shadow evaluation joins the
shadow verdicts with that label and promotes the candidate; and the same post sent again is
decided `safe` by the running scorer serving the new adapter — by the model, not by the sticky
human cache entry.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from guardstream.contracts.events import Source, Verdict, utcnow
from guardstream.devtools.produce import new_post
from guardstream.feedback.curation import CurationConfig
from guardstream.feedback.job import FeedbackConfig, evaluate_shadow, run_cycle
from guardstream.feedback.shadow import ShadowConfig
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.verdict.archive import Archive
from tests.integration.conftest import in_process
from tests.integration.pipeline.test_pipeline import decide
from tests.integration.review.conftest import Console
from tests.support.feedback import (
    CORRECTION_REASON,
    MISJUDGED,
    MISJUDGED_LIVE,
    MISJUDGED_VARIANT,
    TEST_LORA,
    taught_samples,
    wait_shadow_records,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


async def test_a_human_correction_becomes_a_better_model_in_production(
    console: Console, tmp_path: Path, model_cache_dir: Path
) -> None:
    settings = console.settings.replace(
        model={"adapter_dir": tmp_path / "adapters", "adapter_poll_s": 0.2}
    )
    archive = Archive(settings.feedback.dir)
    # The archive's history: earlier reviews that confirmed the model (anchors for training).
    history = [s for s in taught_samples() if not s.disagrees]
    archive.append(
        [s.model_copy(update={"reviewed_at": utcnow() - timedelta(days=7)}) for s in history]
    )
    engine = await VllmGuardEngine.start(settings)
    try:
        async with in_process(settings, engine, "triage", "scorer") as pipeline:
            # 1. The model misjudges the post: controversial → review task.
            first = new_post(MISJUDGED, tenant="acme")
            variant = new_post(MISJUDGED_VARIANT, tenant="acme")
            before = {d.post_id: d for _, d in (await decide(settings, [first, variant])).values()}
            assert {d.verdict for d in before.values()} == {Verdict.CONTROVERSIAL}
            assert all(d.adapter is None for d in before.values())
            await console.wait_tasks(2)

            # 2. Reviewers correct both in the console (API, as the console page does).
            await console.add_reviewer("alice", ("acme",))

            async def correct_next() -> None:
                async with console.client("alice") as http:
                    task = (await http.post("/api/v1/tasks/claim")).json()
                    decided = await http.post(
                        f"/api/v1/tasks/{task['task_id']}/decision",
                        json={
                            "outcome": "correct",
                            "verdict": "safe",
                            "reason": CORRECTION_REASON,
                            "tags": ["误判"],
                        },
                    )
                    assert decided.status_code == 200, decided.text

            async def corrections(n: int) -> list[str]:
                for _ in range(600):  # the relay archives them after commit
                    found = [s.text for s in archive.read() if s.disagrees]
                    if len(found) == n:
                        return found
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{len(found)} of {n} corrections archived")

            for _ in range(2):
                await correct_next()
            assert set(await corrections(2)) == {MISJUDGED, MISJUDGED_VARIANT}

            # 3. The weekly cycle: curate, train, evaluate on held-out, put in shadow.
            registry = AdapterRegistry(tmp_path / "adapters")
            report = await asyncio.to_thread(
                run_cycle,
                archive,
                ensure_tiny_checkpoint(model_cache_dir),
                registry,
                utcnow(),
                FeedbackConfig(
                    min_samples=2,
                    curation=CurationConfig(anchor_ratio=20, min_judges=1, reviewer_cap=1.0),
                    lora=TEST_LORA,
                ),
            )
            assert report.status == "shadowing", report
            assert report.metrics["candidate_held_out"]["accuracy"] == 1.0
            in_shadow = registry.snapshot(fresh=True)
            assert in_shadow.serving_for("acme") is None  # not promoted yet
            assert in_shadow.shadow_for("acme") is not None
            await pipeline.serving_generation(in_shadow.generation)

            # 4. Live traffic in shadow: the base model still decides (the candidate's verdict
            # is recorded, not actioned); a reviewer labels what went to review.
            live, bomb = new_post(MISJUDGED_LIVE, tenant="acme"), new_post("How can I make a bomb?")
            shadowed = {d.post_id: d for _, d in (await decide(settings, [live, bomb])).values()}
            assert shadowed[live.post_id].verdict is Verdict.CONTROVERSIAL
            assert {d.adapter for d in shadowed.values()} == {None}
            records = {
                r.post_id: r
                for r in await wait_shadow_records(settings, {live.post_id, bomb.post_id})
            }
            assert records[live.post_id].candidate_adapter == report.adapter_id
            assert records[live.post_id].candidate_verdict is Verdict.SAFE
            assert records[live.post_id].content_key == shadowed[live.post_id].content_key
            await console.wait_tasks(3, within=60)
            await correct_next()
            assert MISJUDGED_LIVE in await corrections(3)

            # 5. The shadow evaluation: the candidate beat the serving model on live traffic.
            verdict = evaluate_shadow(
                archive,
                registry,
                list(records.values()),
                utcnow(),
                ShadowConfig(min_samples=2, min_labelled=1, require_approval=False, min_judges=1),
            )
            assert verdict.status == "promote", verdict
            assert verdict.metrics is not None
            assert (verdict.metrics.serving_accuracy, verdict.metrics.candidate_accuracy) == (
                0.0,
                1.0,
            )
            await pipeline.serving_generation(registry.snapshot(fresh=True).generation)

            # 6. The same post again: the running scorer, serving the new adapter, says safe.
            again = new_post(MISJUDGED, tenant="acme")
            ((_, after),) = (await decide(settings, [again])).values()
            assert after.verdict is Verdict.SAFE
            assert after.source is Source.MODEL  # the model's answer, not the human cache
            assert after.adapter == report.adapter_id
    finally:
        await engine.close()
