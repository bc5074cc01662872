"""The weekly cycle on real parts: archived reviews → curation → LoRA training on the tiny
checkpoint → evaluation against the serving model → shadow candidate in the adapter registry
(promotion waits for the shadow evaluation), and no second training run while it shadows or
until enough new curated samples arrive."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from guardstream.feedback.curation import CurationConfig
from guardstream.feedback.job import FeedbackConfig, run_cycle
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.verdict.archive import Archive
from tests.support.feedback import T0, TEST_LORA, taught_samples, variant_correction

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_enough_corrections_train_evaluate_and_shadow_an_adapter(
    model_cache_dir: Path, tmp_path: Path
) -> None:
    base = ensure_tiny_checkpoint(model_cache_dir)
    archive = Archive(tmp_path / "feedback")
    archive.append([*taught_samples(), variant_correction()])
    registry = AdapterRegistry(tmp_path / "adapters")
    # One reviewer's archive: no judging quorum, no reviewer cap (tests/unit/feedback/test_checks)
    curation = CurationConfig(anchor_ratio=20, min_judges=1, reviewer_cap=1.0)
    config = FeedbackConfig(min_samples=2, curation=curation, lora=TEST_LORA)
    now = T0 + timedelta(days=1)

    report = run_cycle(archive, base, registry, now, config)
    assert report.status == "shadowing", report
    assert report.counts["curated"] == 2
    assert report.counts["held_out"] == 1  # one wording learnt, the other judged
    held_before = report.metrics["current_held_out"]["accuracy"]
    held_after = report.metrics["candidate_held_out"]["accuracy"]
    assert (held_before, held_after) == (0.0, 1.0)
    snapshot = registry.snapshot(fresh=True)
    assert snapshot.serving_for("acme") is None  # only the shadow evaluation promotes
    candidate = snapshot.shadow_for("acme")
    assert candidate is not None
    assert candidate.adapter_id == report.adapter_id
    card = json.loads((candidate.path / "model_card.json").read_text())
    assert (card["held_out_passed"], card["promoted"]) == (True, False)
    assert card["counts"]["curated"] == 2
    assert card["lora"]["target_modules"] == ["q_proj", "v_proj"]

    waiting = run_cycle(archive, base, registry, now + timedelta(days=7), config)
    assert (waiting.status, waiting.adapter_id) == ("skipped", report.adapter_id)
    assert "in shadow" in waiting.detail

    registry.end_shadow(report.adapter_id, "retired", "test")
    again = run_cycle(archive, base, registry, now + timedelta(days=7), config)
    assert again.status == "skipped"
    assert again.new_curated == 0
