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
7. Checks and balances (our addition): a single label can train but not judge — only content
   whose winning label was given by at least `min_judges` distinct reviewers, or by a
   senior's QA re-review (a confirmed QA label), may be held out (`evaluation_truth`; the
   shadow gate uses the same truth). And no reviewer holds more than `reviewer_cap` of any
   one set (train, held-out, anchor train, anchor held-out; `cap_per_reviewer`), so neither
   the training set nor the evaluation set is any one person's. Caps per set imply the cap
   on their union (a mediant of shares each within the cap is within it).
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
from fractions import Fraction

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
    min_judges: int = 2  # distinct reviewers agreeing before a label judges (1: any label)
    reviewer_cap: float = 0.3  # most share of one set one reviewer may contribute (1: no cap)


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
    capped: int = 0  # samples left out so that no reviewer exceeds `reviewer_cap` of a set

    @property
    def contributions(self) -> dict[str, dict[str, int]]:
        """Samples per reviewer (ids as stored) in each set, for the model card."""
        sets = {
            "train": self.train,
            "held_out": self.held_out,
            "anchor_train": self.anchor_train,
            "anchor_held_out": self.anchor_held_out,
        }
        out: dict[str, dict[str, int]] = {}
        for name, items in sets.items():
            counts: dict[str, int] = {}
            for item in items:
                counts[item.sample.reviewer] = counts.get(item.sample.reviewer, 0) + 1
            out[name] = dict(sorted(counts.items()))
        return out

    @property
    def curated(self) -> int:
        return len(self.train) + len(self.held_out)


def latest_per_content_key(samples: Iterable[FeedbackSample]) -> tuple[list[FeedbackSample], int]:
    best: dict[str, FeedbackSample] = {}
    total = 0
    for sample in samples:
        total += 1
        current = best.get(sample.content_key)
        if current is None or label_rank(sample) > label_rank(current):
            best[sample.content_key] = sample
    return sorted(best.values(), key=lambda s: s.content_key), total - len(best)


def label_rank(sample: FeedbackSample) -> tuple[bool, object, str]:
    return (sample.stage is ReviewStage.QA, sample.reviewed_at, sample.sample_id)


def evaluation_truth(samples: Iterable[FeedbackSample], min_judges: int = 2) -> dict[str, Verdict]:
    """The labels fit to judge a model by, per content key: the winning label (as in
    `latest_per_content_key`) when it is a senior's QA re-review or when at least
    `min_judges` distinct reviewers gave that verdict. One reviewer alone never judges."""
    return {key: won.human_verdict for key, won in judging_labels(samples, min_judges).items()}


def judging_labels(
    samples: Iterable[FeedbackSample], min_judges: int = 2
) -> dict[str, FeedbackSample]:
    """`evaluation_truth` with the winning review itself (whose reviewer the cap counts)."""
    winners: dict[str, FeedbackSample] = {}
    judges: dict[tuple[str, Verdict], set[str]] = {}
    for sample in samples:
        current = winners.get(sample.content_key)
        if current is None or label_rank(sample) > label_rank(current):
            winners[sample.content_key] = sample
        judges.setdefault((sample.content_key, sample.human_verdict), set()).add(sample.reviewer)
    return {
        key: won
        for key, won in winners.items()
        if won.stage is ReviewStage.QA
        or len(judges[(key, won.human_verdict)]) >= max(min_judges, 1)
    }


def cap_per_reviewer(items: Sequence[Curated], cap: float) -> tuple[list[Curated], int]:
    """The largest subset of `items` in which no reviewer holds more than `cap` of it, and the
    number left out (`capped_ids`)."""
    keep = capped_ids(
        [(c.sample.sample_id, c.sample.reviewer, c.sample.content_key) for c in items], cap
    )
    kept = [c for c in items if c.sample.sample_id in keep]
    return kept, len(items) - len(kept)


def capped_ids(items: Sequence[tuple[str, str, str]], cap: float) -> set[str]:
    """Of `items` (id, reviewer, content key), the ids of the largest subset in which no
    reviewer holds more than `cap` of it. Which of a reviewer's items stay is deterministic
    (content key hash, then id).

    For a size n, reviewer r may keep q(n) = floor(cap·n) of its c_r items; n is feasible
    when Σ min(c_r, q(n)) ≥ n. At the largest feasible n the sum is exactly n (a larger sum
    would itself be feasible), so keeping min(c_r, q(n)) of each reviewer's gives that set."""
    if cap >= 1 or not items:
        return {item_id for item_id, _, _ in items}
    limit = Fraction(cap).limit_denominator(1_000_000)  # 0.3 means 3/10, not 0.29999…
    by_reviewer: dict[str, list[tuple[str, str, str]]] = {}
    for item in items:
        by_reviewer.setdefault(item[1], []).append(item)
    sizes = [len(v) for v in by_reviewer.values()]
    size = 0
    for n in range(len(items), 0, -1):
        quota = math.floor(limit * n)
        if sum(min(c, quota) for c in sizes) >= n:
            size = n
            break
    quota = math.floor(limit * size)
    keep: set[str] = set()
    for own in by_reviewer.values():
        own.sort(key=lambda item: (_hash01(item[2], b"gs-cap"), item[0]))
        keep.update(item_id for item_id, _, _ in own[:quota])
    return keep


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
    samples = list(samples)
    unique, superseded = latest_per_content_key(samples)
    truth = evaluation_truth(samples, config.min_judges)

    def judges(item: Curated) -> bool:
        return item.sample.content_key in truth

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
        train, held = _split(stratum, config.held_out_fraction, judges)
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
        train, held = _split(stratum, config.held_out_fraction, judges)
        out.anchor_train.extend(train)
        out.anchor_held_out.extend(held)
    for name in ("train", "held_out", "anchor_train", "anchor_held_out"):
        kept, left_out = cap_per_reviewer(getattr(out, name), config.reviewer_cap)
        setattr(out, name, kept)
        out.capped += left_out
    return out


def _split(
    stratum: Sequence[Curated], fraction: float, judges: Callable[[Curated], bool]
) -> tuple[list[Curated], list[Curated]]:
    """Hash-based split among the samples whose label `judges` (the others always train),
    except that a label absent from training cannot be learnt and one absent from held-out
    cannot be judged: a lone sample trains, two or more have a sample on each side when one
    of them can judge."""
    chosen = [c for c in stratum if judges(c) and in_held_out(c.sample.content_key, fraction)]
    held_ids = {id(c) for c in chosen}
    held = chosen
    train = [c for c in stratum if id(c) not in held_ids]
    if len(stratum) == 1:
        train, held = list(stratum), []
    elif fraction > 0:
        if not held:
            judging = [c for c in train if judges(c)]
            if judging:
                train.remove(judging[-1])
                held.append(judging[-1])
        elif not train:
            train.append(held.pop())
    return train, held
