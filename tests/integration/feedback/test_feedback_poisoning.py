"""Poisoning: one reviewer floods the archive with wrong corrections (every unsafe prompt of
the tiny checkpoint's teaching set relabelled `safe`, after two of four honest reviewers had
confirmed it). The next cycle, on the real archive files and a real LoRA run on the tiny
checkpoint with the default checks (two judges, 30 % reviewer cap), names her — her
disagreement with the other judges, theirs, her share of the corrections — in its report and
on the model card, and its gate rejects the candidate that learnt from her labels; the
registry keeps the attempt."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from guardstream.contracts.events import Verdict
from guardstream.feedback.job import FeedbackConfig, run_cycle
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.verdict.archive import Archive
from tests.support.feedback import T0, TEST_LORA, taught_samples

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # may build the tiny checkpoint


def test_a_flood_of_wrong_corrections_names_the_reviewer_and_fails_the_gate(
    model_cache_dir: Path, tmp_path: Path
) -> None:
    base = ensure_tiny_checkpoint(model_cache_dir)
    # Four honest reviewers, two on each taught prompt, label it the way it was taught (the
    # model was unsure, so each label is curated) and agree on the misjudged remark's
    # correction. Four: at a 30 % cap a set needs at least four reviewers to hold anything.
    unsure = [s.model_copy(update={"pred_confidence": 0.5}) for s in taught_samples()]
    honest = [s.model_copy(update={"reviewer": f"rv-{1 + i % 4}"}) for i, s in enumerate(unsure)]
    second = [
        s.model_copy(
            update={
                "event_id": f"{s.event_id}-b",
                "sample_id": f"{s.sample_id}-b",
                "reviewer": f"rv-{1 + (i + 1) % 4}",
                "reviewed_at": s.reviewed_at + timedelta(hours=1),
            }
        )
        for i, s in enumerate(honest)
    ]
    # Mallory, later, relabels every unsafe prompt safe: the latest label wins the content.
    flood = [
        s.model_copy(
            update={
                "event_id": f"{s.event_id}-m",
                "sample_id": f"{s.sample_id}-m",
                "reviewer": "mallory",
                "human_verdict": Verdict.SAFE,
                "human_categories": (),
                "reviewed_at": s.reviewed_at + timedelta(hours=2),
            }
        )
        for s in honest
        if s.human_verdict is Verdict.UNSAFE
    ]
    assert len(flood) >= 5
    archive = Archive(tmp_path / "feedback")
    archive.append([*honest, *second, *flood])
    registry = AdapterRegistry(tmp_path / "adapters")
    config = FeedbackConfig(min_samples=2, lora=TEST_LORA)  # default judges, cap and audit

    report = run_cycle(archive, base, registry, T0 + timedelta(days=1), config)

    assert report.status == "rejected", report
    assert "suspected reviewers" in report.detail and "mallory" in report.detail
    (suspect,) = report.suspects
    assert suspect["reviewer"] == "mallory"
    assert (suspect["overlaps"], suspect["disagreements"]) == (len(flood), len(flood))
    assert suspect["disagreement_rate"] == 1.0
    assert suspect["others_rate"] < 0.5
    assert suspect["correction_share"] > 0.8  # the others corrected the misjudged remark only
    # The cap kept her under 30 % of the set she reached, and the card says whose labels it is.
    assert report.adapter_id is not None
    card = registry.card(report.adapter_id)
    train = card["reviewer_contributions"]["train"]
    assert 0 < train["mallory"] <= 0.3 * sum(train.values())
    assert card["reviewer_audit"][0]["reviewer"] == "mallory"
    assert card["reviewer_audit"][0]["suspect"] is True
    assert not any(r["suspect"] for r in card["reviewer_audit"][1:])
    assert card["held_out_passed"] is False
    snapshot = registry.snapshot(fresh=True)
    assert snapshot.shadow_for("acme") is None and snapshot.serving_for("acme") is None
    on_disk = json.loads(
        (archive.root / "runs" / report.adapter_id / "model_card.json").read_text()
    )
    assert "mallory" in on_disk["decision"]
