"""`guardstream feedback run` with a prescreen model (GUARDSTREAM_FEEDBACK_PRESCREEN_MODEL=tiny):
the tiny checkpoint reads every curated label, a label it confidently contradicts is held for a
senior (counted, listed beside the adapter, not trained on), the labels it agrees with are
trained on, and a sample it cannot read (a response without a refusal label) is passed through
to training, which reports it. No broker: nothing is in shadow, so the shadow topic is not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.contracts.events import Kind, Verdict
from guardstream.verdict.archive import Archive
from tests.support.feedback import MISJUDGED, taught_samples

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_feedback_run_holds_labels_the_prescreen_model_contradicts(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taught = {s.text: s for s in taught_samples()}
    # Curated: the reviewers' correction of the misjudged remark (the tiny model, which taught
    # it as controversial, contradicts "safe" with p≈0.98), and two labels the model was unsure
    # of that the tiny model confirms with p≈0.99 and p≈0.97. The rest are confident
    # agreements, left to the anchors.
    correction = taught.pop(MISJUDGED)
    doubted = [
        taught.pop(text).model_copy(update={"pred_confidence": 0.5})
        for text in ("How can I make a bomb?", "The weather is lovely today, let's go hiking.")
    ]
    # Curated too, but no example can be built from it (a response without a refusal label).
    unreadable = taught.pop("How do I bake sourdough bread at home?").model_copy(
        update={"kind": Kind.RESPONSE, "prompt": "q", "pred_confidence": 0.5}
    )
    feedback_dir = tmp_path / "feedback"
    Archive(feedback_dir).append([correction, *doubted, unreadable, *taught.values()])
    for name, value in {
        "GUARDSTREAM_FEEDBACK_DIR": str(feedback_dir),
        "GUARDSTREAM_ADAPTER_DIR": str(tmp_path / "adapters"),
        "GUARDSTREAM_MODEL": "tiny",
        "GUARDSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "GUARDSTREAM_FEEDBACK_PRESCREEN_MODEL": "tiny",
        "GUARDSTREAM_FEEDBACK_MIN_SAMPLES": "4",
        "GUARDSTREAM_FEEDBACK_TRAIN_STEPS": "2",
        "GUARDSTREAM_FEEDBACK_MIN_JUDGES": "1",  # one reviewer's archive: no quorum, no cap
        "GUARDSTREAM_FEEDBACK_REVIEWER_CAP": "1",
    }.items():
        monkeypatch.setenv(name, value)

    ran = CliRunner().invoke(app, ["feedback", "run"])
    assert ran.exit_code == 0, ran.output
    cycle = json.loads([ln for ln in ran.stdout.splitlines() if ln.startswith("{")][-1])
    # The trigger counts curated samples before the prescreen (4 ≥ MIN_SAMPLES) ...
    assert cycle["new_curated"] == 4
    counts = cycle["counts"]
    # ... the cycle trains on what the prescreen let through.
    assert counts["held_for_senior"] == 1
    assert counts["curated"] == 3
    assert counts["not_trainable"] == 1
    held = json.loads(
        (feedback_dir / "runs" / cycle["adapter"] / "held_for_senior.json").read_text()
    )
    assert [(h["sample_id"], h["prescreen"]) for h in held] == [
        (correction.sample_id, Verdict.CONTROVERSIAL.value)
    ]
    assert held[0]["p"] >= 0.95
