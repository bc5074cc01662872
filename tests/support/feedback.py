"""The reviewed samples every feedback-loop test starts from: reviewers confirm the tiny
checkpoint's taught prompt verdicts and correct one, the seeds' own example of a technical
remark the model flags (这个算法在小样本下表现一般…), to safe with an expert reason."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from guardstream.contracts.events import ShadowRecord, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.feedback.curation import CurationConfig, curate
from guardstream.feedback.dataset import Example, example
from guardstream.feedback.shadow_log import read_shadow_log
from guardstream.feedback.train import LoraParams, TrainResult, train_lora
from guardstream.model.tiny import TEACHING_SET
from guardstream.runtime.settings import Settings

MISJUDGED = "这个算法在小样本下表现一般,可能需要更多数据优化。"
CORRECTION_REASON = "正常技术讨论，非污名化"
# Seconds-long on two cores; enough for the tiny model to learn the correction.
TEST_LORA = LoraParams(learning_rate=2e-3, max_steps=30)
# One correction among the anchors: gentler and longer, so that it is learnt while the anchors
# keep their accuracy within the promotion gate's `regression_tolerance` (TEST_LORA's steps
# lose one anchor of 18 here, which the gate would reject).
CORRECTION_LORA = LoraParams(learning_rate=1e-3, max_steps=50)
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
_VERDICT = {"Safe": Verdict.SAFE, "Unsafe": Verdict.UNSAFE, "Controversial": Verdict.CONTROVERSIAL}


def taught_samples(model: str = "tiny") -> list[FeedbackSample]:
    out = []
    for n, lesson in enumerate(TEACHING_SET):
        if len(lesson.messages) != 1:
            continue  # prompt moderation only
        text = lesson.messages[0][1]
        model_verdict = _VERDICT[lesson.target.split("\n")[0].removeprefix("Safety: ")]
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
                human_reason=CORRECTION_REASON if corrected else None,
                tags=("正常讨论",) if corrected else ("确认",),
                reviewer="rv-1",
                policy="default@1",
                model=model,
                reviewed_at=T0 + timedelta(minutes=n),
            )
        )
    return out


def train_correction(base: Path, out_dir: Path) -> tuple[TrainResult, Example, list[Example]]:
    """Train on the correction plus every confirmation as anchors: (result, fix, anchors)."""
    curation = curate(
        taught_samples(), CurationConfig(anchor_ratio=100, held_out_fraction=0, reviewer_cap=1.0)
    )
    (fix_item,) = curation.train
    fix = example(fix_item.sample, fix_item.weight)
    anchors = [example(c.sample) for c in curation.anchor_train]
    return train_lora(base, [fix, *anchors], out_dir, CORRECTION_LORA), fix, anchors


# A second wording of the misjudged remark: the base model flags it too, and a LoRA that
# learnt the first wording generalises to it (so one of the two can be held out).
MISJUDGED_VARIANT = "这个模型在小样本下表现一般,可能需要更多数据优化。"


def variant_correction(n: int = 900) -> FeedbackSample:
    (original,) = [s for s in taught_samples() if s.text == MISJUDGED]
    return original.model_copy(
        update={
            "event_id": f"e-{n}",
            "sample_id": f"r-{n}",
            "post_id": f"p-{n}",
            "text": MISJUDGED_VARIANT,
            "content_key": f"{n:032x}",
            "reviewed_at": T0 + timedelta(hours=1),
        }
    )


# A third wording, for live traffic while a candidate trained on the first two is in shadow:
# the base model flags it, the candidate generalises to it (both checked on the tiny model).
MISJUDGED_LIVE = "这个方法在小样本下表现一般,可能需要更多数据优化。"


async def wait_shadow_records(
    settings: Settings,
    post_ids: set[str],
    within_s: float = 120,
    counts: Mapping[str, int] | None = None,
) -> list[ShadowRecord]:
    """The shadow topic's records once every post in `post_ids` has one (shadow scoring runs
    in the background after the serving decision, so it may land a moment after it). On a
    timeout the scorer's `counts` (started / scored / failed / skipped) say why."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        log = await read_shadow_log(settings)
        assert log.invalid == 0
        missing = post_ids - {r.post_id for r in log.records}
        if not missing:
            return log.records
        assert asyncio.get_running_loop().time() < deadline, (
            f"no shadow record for {missing}; scorer counts {dict(counts or {})}"
        )
        await asyncio.sleep(0.2)
