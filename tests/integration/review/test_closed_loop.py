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

Then the same loop carries a policy pack's own category (the seed's financial platform):
tenant `fin`'s pack adds `Financial Fraud` / `金融欺诈` and names the post's region (`CN` →
中国大陆); the served model does not name it for the 保本高收益 posts; a reviewer picks
`Financial Fraud` from the pack's list in the console API (a misspelling is refused with the
close spelling); the archived samples carry the pack's categories and the region tag, which
training renders into the prompt (`tests/unit/policy/test_categories.py`). Not yet proven here:
that the tiny model, trained on them, answers `Financial Fraud` (its tokenizer has no merges
for the name; 60 LoRA steps learn the label, not the name).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from guardstream.contracts.events import Source, Verdict, utcnow
from guardstream.contracts.text import normalise
from guardstream.devtools.produce import new_post
from guardstream.feedback.curation import CurationConfig
from guardstream.feedback.dataset import example
from guardstream.feedback.job import FeedbackConfig, evaluate_shadow, run_cycle
from guardstream.feedback.shadow import ShadowConfig
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.guard import CATEGORIES_ROLE
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.policy import PACKS_DIR
from guardstream.runtime.settings import Settings
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

FRAUD = "Financial Fraud"
# Tenant fin's pack: Qwen3Guard's nine plus its own category, the post's region named in the
# prompt, and every verdict below near-certainty reviewed (so the base model's go to review).
FIN_PACK = f"""
id: fin
version: "1"
tenants: [fin]
controversial: review
review_below: {{safe: 0.99, unsafe: 0.99, controversial: 0.99}}
categories:
  extend:
    - name: {FRAUD}
      description: Guaranteed returns (保本高收益), Ponzi schemes, unlicensed investment offers.
      translations: {{zh: 金融欺诈}}
region_names: {{CN: 中国大陆, IN: 印度}}
reuse_near_duplicates: false
"""
# Three wordings of one guaranteed-returns pitch (the seed's 保本高收益); the base model says
# unsafe (70-92 %) without a category.
FRAUD_POSTS = (
    "保本高收益，每月稳赚25%，快来投资！",
    "保本高收益，每月稳赚30%，快来投资！",
    "保本高收益，每周稳赚25%，快来投资！",
)


@pytest.fixture
async def review_settings(review_settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    packs = tmp_path / "packs"
    packs.mkdir()
    (packs / "default.yaml").write_text((PACKS_DIR / "default.yaml").read_text())
    (packs / "fin.yaml").write_text(FIN_PACK)
    yield review_settings.replace(policy={"dir": packs})


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
                    found = [s.text for s in archive.read() if s.disagrees and s.tenant == "acme"]
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
                ShadowConfig(
                    min_samples=2,
                    min_labelled=1,
                    require_approval=False,
                    min_judges=1,
                    reviewer_cap=1.0,
                ),
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

            # 7. Tenant fin's posts: the served model does not name the pack's own category; a
            # reviewer picks it from the pack's list; the archived samples carry the list and
            # the region tag the prompt had (what the next cycle trains with).
            fraud = [new_post(t, tenant="fin", region="CN") for t in FRAUD_POSTS]
            first_fraud = {d.post_id: d for _, d in (await decide(settings, fraud)).values()}
            assert all(FRAUD not in d.categories for d in first_fraud.values())
            assert {d.policy for d in first_fraud.values()} == {"fin@1"}
            for _ in range(300):
                rows = await console.sql("SELECT count(*) AS n FROM tasks WHERE tenant = 'fin'")
                if rows[0]["n"] == len(FRAUD_POSTS):
                    break
                await asyncio.sleep(0.1)
            assert rows[0]["n"] == len(FRAUD_POSTS)
            await console.add_reviewer("bob", ("fin",))
            async with console.client("bob") as http:
                for n in range(len(FRAUD_POSTS)):
                    task = (await http.post("/api/v1/tasks/claim")).json()
                    url = f"/api/v1/tasks/{task['task_id']}/decision"
                    unsafe = task["model_verdict"] == "unsafe"
                    label = {"outcome": "confirm"} if unsafe else {"outcome": "correct"}
                    body = {
                        **label,
                        "verdict": "unsafe",
                        "reason": "保本高收益，金融欺诈",
                        "tags": ["误判"],
                        "categories": [FRAUD],
                    }
                    if n == 0:  # a category outside the pack's list is refused, with a hint
                        wrong = await http.post(
                            url, json={**body, "categories": ["Financial fraud"]}
                        )
                        assert wrong.status_code == 422, wrong.text
                        assert f"did you mean '{FRAUD}'" in wrong.text
                    decided = await http.post(
                        f"/api/v1/tasks/{task['task_id']}/decision", json=body
                    )
                    assert decided.status_code == 200, decided.text
            for _ in range(600):
                taught = [s for s in archive.read() if s.tenant == "fin"]
                if len(taught) == len(FRAUD_POSTS):
                    break
                await asyncio.sleep(0.1)
            # What the model saw: the normalised post behind the region tag of its own region.
            assert {s.text for s in taught} == {
                f"[地区:中国大陆] {normalise(t)}" for t in FRAUD_POSTS
            }
            assert all(s.human_categories == (FRAUD,) for s in taught)
            assert all(s.categories and s.categories[-1].name == FRAUD for s in taught)
            trained = example(taught[0])  # what the next cycle trains: the pack's list, its name
            assert trained.messages[0][0] == CATEGORIES_ROLE
            assert trained.target == f"Safety: Unsafe\nCategories: {FRAUD}"

    finally:
        await engine.close()
