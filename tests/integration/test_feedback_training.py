"""LoRA training on the real tiny checkpoint (transformers + peft): a reviewer's correction is
learnt, the anchors keep what the model already knew, and the held-out evaluation sees both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardstream.core.contracts import Verdict
from guardstream.feedback.curation import CurationConfig, curate
from guardstream.feedback.dataset import example
from guardstream.feedback.evaluate import LabelScorer, evaluate
from guardstream.feedback.sample import FeedbackSample
from guardstream.feedback.train import LoraParams, train_lora
from guardstream.model.tiny import TEACHING_SET, ensure_tiny_checkpoint

pytestmark = pytest.mark.integration

# The seeds' own example: a technical remark the model flags, which reviewers mark safe.
MISJUDGED = "这个算法在小样本下表现一般,可能需要更多数据优化。"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
_VERDICT = {"Safe": Verdict.SAFE, "Unsafe": Verdict.UNSAFE, "Controversial": Verdict.CONTROVERSIAL}


def taught_samples() -> list[FeedbackSample]:
    """Reviews of the taught prompts: the correction, and confirmations of the rest."""
    out = []
    for n, lesson in enumerate(TEACHING_SET):
        if len(lesson.messages) != 1:
            continue  # prompt moderation only here
        text = lesson.messages[0][1]
        label = lesson.target.split("\n")[0].removeprefix("Safety: ")
        model_verdict = _VERDICT[label]
        corrected = text == MISJUDGED
        out.append(
            FeedbackSample(
                event_id=f"e-{n}",
                produced_at=T0,
                sample_id=f"r-{n}",
                post_id=f"p-{n}",
                tenant="acme",
                text=text,
                content_key=f"{n:032x}",
                pred_verdict=model_verdict,
                pred_confidence=0.99,
                human_verdict=Verdict.SAFE if corrected else model_verdict,
                human_reason="正常技术讨论，非污名化" if corrected else None,
                reviewer="rv-1",
                policy="default@1",
                model="tiny",
                reviewed_at=T0 + timedelta(minutes=n),
            )
        )
    return out


def test_a_correction_is_learnt_without_forgetting_the_rest(
    model_cache_dir: Path, tmp_path: Path
) -> None:
    base = ensure_tiny_checkpoint(model_cache_dir)
    curation = curate(taught_samples(), CurationConfig(anchor_ratio=100, held_out_fraction=0))
    assert [c.sample.text for c in curation.train] == [MISJUDGED]
    assert curation.train[0].weight == 2.0  # "污名化" is an expert term
    anchors = [example(c.sample) for c in curation.anchor_train]
    fix = example(curation.train[0].sample, curation.train[0].weight)

    before = LabelScorer(base)
    assert before.predict(fix)[0] is Verdict.CONTROVERSIAL
    result = train_lora(
        base, [fix, *anchors], tmp_path / "adapter", LoraParams(learning_rate=2e-3, max_steps=30)
    )
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert result.card["examples"] == len(anchors) + 1

    after = LabelScorer(base, result.adapter_dir)
    verdict, confidence = after.predict(fix)
    assert verdict is Verdict.SAFE
    assert confidence > 0.5
    kept = evaluate(after, anchors)
    assert kept.accuracy >= 0.8, kept  # anchors hold most of what the model knew
