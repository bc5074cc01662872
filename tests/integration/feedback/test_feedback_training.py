"""LoRA training on the real tiny checkpoint (transformers + peft): a reviewer's correction is
learnt, the anchors keep what the model already knew, and the held-out evaluation sees both."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardstream.contracts.events import Verdict
from guardstream.feedback.evaluate import LabelScorer, evaluate
from guardstream.feedback.job import FeedbackConfig, promotion_decision
from guardstream.model.tiny import ensure_tiny_checkpoint
from tests.support.feedback import train_correction

pytestmark = pytest.mark.integration


def test_a_correction_is_learnt_without_forgetting_the_rest(
    model_cache_dir: Path, tmp_path: Path
) -> None:
    base = ensure_tiny_checkpoint(model_cache_dir)
    result, fix, anchors = train_correction(base, tmp_path / "adapter")
    assert fix.weight == 2.0  # "污名化" is an expert term
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert result.card["examples"] == len(anchors) + 1

    before = LabelScorer(base)
    assert before.predict(fix)[0] is Verdict.CONTROVERSIAL
    knew = evaluate(before, anchors)
    after = LabelScorer(base, result.adapter_dir)
    verdict, confidence = after.predict(fix)
    assert verdict is Verdict.SAFE
    assert confidence > 0.5
    # "Without forgetting" is the product's own gate: `promotion_decision` with the default
    # configuration rejects a candidate whose anchor accuracy falls more than
    # `regression_tolerance` (0.02: not one anchor of these 18) below the serving model's.
    kept = evaluate(after, anchors)
    assert knew.n == kept.n == len(anchors)
    promoted, why = promotion_decision(
        {
            "current_held_out": evaluate(before, [fix]),
            "candidate_held_out": evaluate(after, [fix]),
            "current_anchors": knew,
            "candidate_anchors": kept,
        },
        FeedbackConfig(),
    )
    assert promoted, why
    assert kept.accuracy >= knew.accuracy - FeedbackConfig().regression_tolerance, (knew, kept)
