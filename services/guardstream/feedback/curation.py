"""Which reviews are worth training on (pure). Defaults are the seeds' rules.

1. One sample per content key: a senior's QA review beats a first review, then the latest wins.
2. Keep a sample when the model was unsure (confidence below `confidence_below`, or none) or
   the human label differs from the model's (for a response, its refusal label too); confident
   agreement teaches nothing new.
3. Weight 2× when the human reason uses an expert term (污名化, 刻板印象, …): careful reasons
   come from careful reviews.
4. Prescreen: when a small model disagrees with the human label with high confidence, the
   label may be noise; such samples are held for senior review instead of trained on.
5. Split into train / held-out, stratified by human verdict, deterministically by content key
   (a sample never moves between the two from one run to the next).
6. Anchors (our addition): a LoRA trained on corrections alone forgets what the model got
   right (on the test checkpoint, 14 of 25 taught verdicts flipped). Confident agreements
   are therefore kept as anchors — up to `anchor_ratio` per curated sample, weight 1, split the
   same way — for replay in training and as a regression set in evaluation. They are not
   "curated" samples and do not count towards the training trigger.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from guardstream.contracts.events import ReviewStage, Verdict
from guardstream.contracts.feedback import FeedbackSample

DEFAULT_EXPERT_TERMS: tuple[str, ...] = (
    "污名化",
    "刻板印象",
    "歧视",
    "隐喻",
    "煽动",
    "stigma",
    "stereotype",
    "dog whistle",
    "incitement",
)

#: A prescreen answers (label, confidence) for a sample, from a small model.
Prescreen = Callable[[FeedbackSample], tuple[Verdict, float]]


@dataclass(frozen=True, slots=True)
class CurationConfig:
    confidence_below: float = 0.85
    expert_terms: tuple[str, ...] = DEFAULT_EXPERT_TERMS
    expert_weight: float = 2.0
    prescreen_confidence: float = 0.95
    held_out_fraction: float = 0.2
    anchor_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class Curated:
    sample: FeedbackSample
    weight: float
    why: str  # "disagreement" | "refusal_correction" | "category_correction" | "low_confidence"


@dataclass(slots=True)
class Curation:
    train: list[Curated] = field(default_factory=list)
    held_out: list[Curated] = field(default_factory=list)
    # Likely-noisy labels, for a senior reviewer: (sample, the prescreen's label, confidence).
    held_for_senior: list[tuple[FeedbackSample, Verdict, float]] = field(default_factory=list)
    anchor_train: list[Curated] = field(default_factory=list)
    anchor_held_out: list[Curated] = field(default_factory=list)
    dropped_confident_agreement: int = 0
    superseded: int = 0

    @property
    def curated(self) -> int:
        return len(self.train) + len(self.held_out)


def latest_per_content_key(samples: Iterable[FeedbackSample]) -> tuple[list[FeedbackSample], int]:
    best: dict[str, FeedbackSample] = {}
    total = 0
    for sample in samples:
        total += 1
        current = best.get(sample.content_key)
        if current is None or _rank(sample) > _rank(current):
            best[sample.content_key] = sample
    return sorted(best.values(), key=lambda s: s.content_key), total - len(best)


def _rank(sample: FeedbackSample) -> tuple[bool, object, str]:
    return (sample.stage is ReviewStage.QA, sample.reviewed_at, sample.sample_id)


def worth_training(sample: FeedbackSample, config: CurationConfig) -> str | None:
    if sample.disagrees:
        return "disagreement"
    if sample.refusal_corrected:
        return "refusal_correction"
    if sample.human_verdict is not Verdict.SAFE and sample.human_categories:
        if set(sample.human_categories) != set(sample.pred_categories):
            # The right label with the wrong harm: a pack's own category is taught this way.
            return "category_correction"
    if sample.pred_confidence is None or sample.pred_confidence < config.confidence_below:
        return "low_confidence"
    return None


def weight_of(sample: FeedbackSample, config: CurationConfig) -> float:
    reason = (sample.human_reason or "").casefold()
    expert = any(term.casefold() in reason for term in config.expert_terms)
    return config.expert_weight if expert else 1.0


def _hash01(content_key: str, person: bytes) -> float:
    digest = hashlib.blake2b(content_key.encode(), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_held_out(content_key: str, fraction: float) -> bool:
    return _hash01(content_key, b"gs-split") < fraction


def curate(
    samples: Iterable[FeedbackSample],
    config: CurationConfig = CurationConfig(),
    prescreen: Prescreen | None = None,
) -> Curation:
    unique, superseded = latest_per_content_key(samples)
    out = Curation(superseded=superseded)
    by_verdict: dict[Verdict, list[Curated]] = {}
    agreements: list[FeedbackSample] = []
    for sample in unique:
        why = worth_training(sample, config)
        if why is None:
            agreements.append(sample)
            continue
        if prescreen is not None:
            label, confidence = prescreen(sample)
            if label is not sample.human_verdict and confidence >= config.prescreen_confidence:
                out.held_for_senior.append((sample, label, confidence))
                continue
        by_verdict.setdefault(sample.human_verdict, []).append(
            Curated(sample, weight_of(sample, config), why)
        )
    for stratum in by_verdict.values():
        train, held = _split(stratum, config.held_out_fraction)
        out.train.extend(train)
        out.held_out.extend(held)
    # Anchors: a deterministic choice (by content key hash) among confident agreements.
    wanted = math.floor(config.anchor_ratio * out.curated)
    agreements.sort(key=lambda s: _hash01(s.content_key, b"gs-anchor"))
    anchors_by_verdict: dict[Verdict, list[Curated]] = {}
    for sample in agreements[:wanted]:
        anchors_by_verdict.setdefault(sample.human_verdict, []).append(
            Curated(sample, 1.0, "anchor")
        )
    out.dropped_confident_agreement = len(agreements) - min(wanted, len(agreements))
    for stratum in anchors_by_verdict.values():
        train, held = _split(stratum, config.held_out_fraction)
        out.anchor_train.extend(train)
        out.anchor_held_out.extend(held)
    return out


def _split(stratum: Sequence[Curated], fraction: float) -> tuple[list[Curated], list[Curated]]:
    """Hash-based split, except that a label absent from training cannot be learnt and one
    absent from held-out cannot be judged: a lone sample trains, two or more have a sample on
    each side."""
    held = [c for c in stratum if in_held_out(c.sample.content_key, fraction)]
    train = [c for c in stratum if not in_held_out(c.sample.content_key, fraction)]
    if len(stratum) == 1:
        train, held = list(stratum), []
    elif fraction > 0:
        if not held:
            held.append(train.pop())
        elif not train:
            train.append(held.pop())
    return train, held
