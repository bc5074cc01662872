"""Shadow evaluation: metrics of a candidate's live verdicts against the serving adapter's and
later human labels, the promotion gate on them, and what the evaluation does to the registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardstream.contracts.events import Kind, ScoreRequest, ShadowRecord, Source, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.text import content_key
from guardstream.feedback.job import evaluate_shadow, run_cycle
from guardstream.feedback.report import adapter_row, read_cards
from guardstream.feedback.shadow import (
    ShadowConfig,
    ShadowMetrics,
    ShadowOutcome,
    shadow_decision,
    shadow_metrics,
)
from guardstream.model.adapters import Adapter, AdapterRegistry
from guardstream.policy import load_registry
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import RawAnswer, ScoringError
from guardstream.scorer.service import Scorer, shadow_sampled
from guardstream.verdict.archive import Archive
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.stores import Stores

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
POLICIES = load_registry(None)
S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE


def record(n: int, serving: Verdict, candidate: Verdict, **overrides: Any) -> ShadowRecord:
    base: dict[str, Any] = {
        "event_id": f"shadow-{n}",
        "produced_at": T0,
        "post_id": f"p-{n}",
        "post_event_id": f"e-{n}",
        "tenant": "acme",
        "content_key": f"{n:032x}",
        "policy": "default@1",
        "model": "tiny",
        "serving_verdict": serving,
        "candidate_adapter": "cand",
        "candidate_verdict": candidate,
        "received_at": T0,
        "serving_decided_at": T0,
        "candidate_decided_at": T0,
    }
    return ShadowRecord.model_validate({**base, **overrides})


def label(n: int, human: Verdict, minutes: int = 0, **overrides: Any) -> FeedbackSample:
    base: dict[str, Any] = {
        "event_id": f"r-{n}-{minutes}",
        "produced_at": T0,
        "sample_id": f"r-{n}-{minutes}",
        "post_id": f"p-{n}",
        "tenant": "acme",
        "text": f"post number {n}",
        "content_key": f"{n:032x}",
        "pred_verdict": C,
        "human_verdict": human,
        "human_reason": "复核",
        "tags": ("复核",),
        "reviewer": "rv-1",
        "policy": "default@1",
        "model": "tiny",
        "reviewed_at": T0 + timedelta(hours=1, minutes=minutes),
    }
    return FeedbackSample.model_validate({**base, **overrides})


def test_metrics_compare_candidate_and_serving_on_traffic_and_on_human_labels() -> None:
    records = [
        record(1, C, S),  # contested, human: safe → candidate right, serving wrong
        record(2, C, U),  # contested, human: safe → candidate false positive
        record(3, U, U),  # agreement, human: unsafe
        record(4, S, S),  # agreement, unlabelled
        record(4, S, U),  # the same key scored again: one sample (the first)
        record(5, U, S, serving_adapter="old"),  # against an adapter no longer serving
        record(6, U, S, candidate_adapter="other"),  # another candidate's
    ]
    labels = [label(1, U), label(1, S, minutes=5), label(2, S), label(3, U), label(9, S)]
    m = shadow_metrics(records, labels, "cand", None, min_judges=1, reviewer_cap=1.0)
    assert (m.shadowed, m.stale, m.labelled, m.human_safe) == (4, 1, 3, 2)
    assert m.agreement == 2 / 4
    assert (m.serving_block_rate, m.candidate_block_rate) == (1 / 4, 2 / 4)
    # The later label of key 1 (safe) overrides the earlier one (a QA re-review).
    assert (m.serving_accuracy, m.candidate_accuracy) == (1 / 3, 2 / 3)
    assert (m.serving_false_positive_rate, m.candidate_false_positive_rate) == (0.0, 0.5)


def metrics(**overrides: Any) -> ShadowMetrics:
    base: dict[str, Any] = {
        "candidate": "cand",
        "serving": None,
        "shadowed": 300,
        "stale": 0,
        "agreement": 0.9,
        "serving_block_rate": 0.1,
        "candidate_block_rate": 0.1,
        "labelled": 40,
        "serving_accuracy": 0.70,
        "candidate_accuracy": 0.80,
        "human_safe": 20,
        "serving_false_positive_rate": 0.10,
        "candidate_false_positive_rate": 0.10,
    }
    return ShadowMetrics(**{**base, **overrides})


@pytest.mark.parametrize(
    ("overrides", "age_days", "outcome", "why"),
    [
        ({}, 1, ShadowOutcome.PROMOTE, "0.700 → 0.800"),
        ({"shadowed": 199}, 1, ShadowOutcome.KEEP, "199 shadow samples"),
        ({"labelled": 29}, 1, ShadowOutcome.KEEP, "(29 human-labelled)"),
        ({"labelled": 29}, 14, ShadowOutcome.RETIRE, "14-day window ended"),
        ({"candidate_accuracy": 0.71}, 1, ShadowOutcome.RETIRE, "below the margin"),
        ({"candidate_false_positive_rate": 0.13}, 1, ShadowOutcome.RETIRE, "false-positive"),
        ({"candidate_false_positive_rate": 0.12}, 1, ShadowOutcome.PROMOTE, "agreement 0.900"),
    ],
)
def test_the_gate_promotes_only_a_clear_winner_with_enough_evidence(
    overrides: dict[str, Any], age_days: float, outcome: ShadowOutcome, why: str
) -> None:
    got, reason = shadow_decision(
        metrics(**overrides), ShadowConfig(), T0, T0 + timedelta(days=age_days)
    )
    assert got is outcome, reason
    assert why in reason


def test_shadow_sampling_is_decided_by_the_content_key() -> None:
    keys = [
        content_key(f"post {n}", kind="prompt", prompt=None, model="tiny", adapter=None)
        for n in range(2000)
    ]
    assert all(shadow_sampled(k, 1.0) for k in keys)
    assert not any(shadow_sampled(k, 0.0) for k in keys)
    share = sum(shadow_sampled(k, 0.25) for k in keys) / len(keys)
    assert 0.2 < share < 0.3
    assert [shadow_sampled(k, 0.25) for k in keys] == [shadow_sampled(k, 0.25) for k in keys]


def shadowed_registry(tmp_path: Path) -> tuple[Archive, AdapterRegistry]:
    """A registry with `cand` (from a training run of the archive) in shadow for every tenant."""
    archive = Archive(tmp_path / "feedback")
    run_dir = archive.root / "runs" / "cand"
    run_dir.mkdir(parents=True)
    (run_dir / "adapter_config.json").write_text(json.dumps({"r": 8}))
    card = {"adapter_id": "cand", "held_out_passed": True, "data_window": {"until": "x"}}
    (run_dir / "model_card.json").write_text(json.dumps(card))
    registry = AdapterRegistry(tmp_path / "adapters")
    registry.register("cand", run_dir, card)
    registry.start_shadow("cand")
    return archive, registry


def test_a_winning_candidate_is_promoted_with_its_evidence_on_its_card(tmp_path: Path) -> None:
    archive, registry = shadowed_registry(tmp_path)
    records = [record(1, C, S), record(2, C, S), record(3, U, U)]
    # The deployment opted into automatic promotion (approval: tests/unit/feedback/test_approval)
    config = ShadowConfig(
        min_samples=3, min_labelled=2, require_approval=False, min_judges=1, reviewer_cap=1.0
    )
    now = datetime.now(UTC)

    early = evaluate_shadow(archive, registry, records, now, config)
    assert early.status == "keep"  # no human labels yet
    assert registry.snapshot(fresh=True).shadow == {"*": "cand"}

    archive.append([label(1, S), label(2, S)])
    looked = evaluate_shadow(archive, registry, records, now, config, apply=False)
    assert looked.status == "promote"
    assert registry.snapshot(fresh=True).serving_for("acme") is None  # a look changes nothing

    report = evaluate_shadow(archive, registry, records, now, config)
    assert report.status == "promote", report
    snapshot = registry.snapshot(fresh=True)
    serving = snapshot.serving_for("acme")
    assert serving is not None
    assert serving.adapter_id == "cand"
    assert snapshot.shadow == {}
    assert snapshot.shadow_for("acme") is None
    (card,) = read_cards(archive.root)
    assert card["promoted"] is True
    assert card["shadow"]["candidate_accuracy"] == 1.0
    assert card["shadow"]["serving_accuracy"] == 0.0
    row = adapter_row(card)
    assert row[4:] == ("3 (2)", "0.000 → 1.000", "0.000 → 0.000", "33%", "promoted")


def test_a_losing_candidate_is_retired_and_training_resumes(tmp_path: Path) -> None:
    archive, registry = shadowed_registry(tmp_path)
    archive.append([label(1, S), label(2, S)])
    records = [record(1, S, U), record(2, S, S), record(3, U, U)]
    now = datetime.now(UTC)

    # While it shadows, the weekly cycle does not train another (no model needed to see it).
    waiting = run_cycle(archive, tmp_path / "no-model", registry, now)
    assert (waiting.status, waiting.adapter_id) == ("skipped", "cand")

    report = evaluate_shadow(
        archive,
        registry,
        records,
        now,
        ShadowConfig(min_samples=3, min_labelled=2, min_judges=1, reviewer_cap=1.0),
    )
    assert report.status == "retire"
    assert "below the margin" in report.detail
    snapshot = registry.snapshot(fresh=True)
    assert (snapshot.shadow, snapshot.serving) == ({}, {})
    (card,) = read_cards(archive.root)
    assert card["shadow_outcome"]["outcome"] == "retired"
    assert adapter_row(card)[-1] == "retired"
    assert card["shadow"]["candidate_false_positive_rate"] == 0.5

    resumed = run_cycle(archive, tmp_path / "no-model", registry, now)
    assert resumed.status == "skipped"
    assert "curated samples since the last run" in resumed.detail


class HeldEngine:
    """Latency and fault injection for shadow scoring: requests wait for `release`, then
    answer `text`, or fail when `fails`."""

    def __init__(self, text: str = "Safety: Safe\nCategories: None", fails: bool = False) -> None:
        self.release = asyncio.Event()
        self.text = text
        self.fails = fails
        self.adapters: list[str | None] = []

    @property
    def model_id(self) -> str:
        return "held"

    @property
    def alive(self) -> bool:
        return True

    async def assess(
        self, messages: Sequence[dict[str, str]], request_id: str, adapter: Adapter | None = None
    ) -> RawAnswer:
        self.adapters.append(adapter.adapter_id if adapter else None)
        await self.release.wait()
        if self.fails:
            raise ScoringError("injected")
        return RawAnswer(self.text, {"Safe": -0.01, "Unsafe": -5.0, "Controversial": -5.0})

    async def close(self) -> None:
        pass


class SentRecords:
    """The producer seen from the scorer's shadow path: what was sent where."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, value))


def shadow_scorer(
    tmp_path: Path, engine: HeldEngine, **settings: Any
) -> tuple[Scorer, SentRecords]:
    _, registry = shadowed_registry(tmp_path)
    stores = Stores(cache=None, journal=None, near=None, policies=POLICIES, adapters=registry)  # type: ignore[arg-type]
    producer = SentRecords()
    config = Settings(_env_file=None, namespace="t1", **settings)  # type: ignore[call-arg]
    return Scorer(config, producer, stores, engine), producer  # type: ignore[arg-type]


def score_request(n: int, tenant: str = "acme") -> ScoreRequest:
    return ScoreRequest(
        event_id=f"e-{n}",
        produced_at=T0,
        post_id=f"p-{n}",
        post_event_id=f"e-{n}",
        tenant=tenant,
        kind=Kind.PROMPT,
        text=f"post {n}",
        content_key=content_key(
            f"post {n}", kind="prompt", prompt=None, model="held", adapter=None
        ),
        policy="default@1",
        received_at=T0,
    )


SERVING = CachedVerdict(
    verdict=Verdict.CONTROVERSIAL,
    confidence=0.6,
    reason="model",
    source=Source.MODEL,
    model="held",
    decided_at=T0,
)


async def test_shadow_scoring_is_bounded_and_publishes_only_to_the_shadow_topic(
    tmp_path: Path,
) -> None:
    engine = HeldEngine()
    scorer, producer = shadow_scorer(tmp_path, engine, scorer={"shadow_max_in_flight": 2})
    for n in range(3):
        scorer._start_shadow(score_request(n), SERVING, escalated=False)
    assert (scorer.counts["shadow_started"], scorer.counts["shadow_skipped"]) == (2, 1)
    engine.release.set()
    await asyncio.gather(*scorer._shadow_tasks)
    assert scorer.counts["shadow_scored"] == 2
    assert engine.adapters == ["cand", "cand"]
    assert {topic for topic, _, _ in producer.sent} == {"t1.moderation.shadow.v1"}
    shadow = ShadowRecord.from_json(producer.sent[0][2])
    assert (shadow.serving_verdict, shadow.candidate_verdict) == (C, S)
    assert shadow.candidate_confidence is not None and shadow.candidate_confidence > 0.9
    assert producer.sent[0][1] == shadow.content_key.encode()


async def test_a_failed_shadow_scoring_is_counted_and_sends_nothing(tmp_path: Path) -> None:
    engine = HeldEngine(fails=True)
    scorer, producer = shadow_scorer(tmp_path, engine)
    scorer._start_shadow(score_request(1), SERVING, escalated=False)
    engine.release.set()
    await asyncio.gather(*scorer._shadow_tasks)  # the failure stays inside the task
    assert (scorer.counts["shadow_failed"], scorer.counts["shadow_scored"]) == (1, 0)
    assert producer.sent == []


async def test_sampling_switch_off_and_the_second_tier_start_no_shadow_scoring(
    tmp_path: Path,
) -> None:
    engine = HeldEngine()
    off, _ = shadow_scorer(tmp_path / "a", engine, scorer={"shadow_max_in_flight": 0})
    never, _ = shadow_scorer(tmp_path / "b", engine, scorer={"shadow_sample_rate": 0.0})
    second_tier, _ = shadow_scorer(tmp_path / "c", engine, scorer={"source": "escalations"})
    for scorer in (off, never, second_tier):
        scorer._start_shadow(score_request(1), SERVING, escalated=False)
        assert scorer.counts["shadow_started"] == 0
    assert engine.adapters == []


async def test_stopping_drops_shadow_scorings_still_running(tmp_path: Path) -> None:
    engine = HeldEngine()  # never released
    scorer, producer = shadow_scorer(tmp_path, engine)
    scorer._start_shadow(score_request(1), SERVING, escalated=False)
    await asyncio.sleep(0)  # let it reach the engine
    await scorer.drain_shadow(timeout_s=0.01)
    assert not scorer._shadow_tasks
    assert (scorer.counts["shadow_failed"], producer.sent) == (0, [])
