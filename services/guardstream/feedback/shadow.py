"""Shadow evaluation (pure): a candidate adapter's verdicts on live traffic, compared with the
serving adapter's on the same content and with later human labels, and the promotion gate.

Inputs are the scorer's `ShadowRecord`s (one per content key scored in shadow) and the review
archive. A record counts only against the adapter serving now: records made while another
adapter served (before a promotion or a rollback) are `stale`. Human labels join on the
serving content key (the latest review of that content wins, so a senior's QA re-review
overrides the first one); a label judges only when two distinct reviewers gave it or it is a
senior's QA re-review (`curation.evaluation_truth`), and no reviewer's labels make more than
`reviewer_cap` of the labelled keys (`curation.capped_ids`, as for the curated sets). Labels
exist where the serving model sent content to review (and where QA re-reviewed), so accuracy
and false-positive rate are measured on contested content; agreement and block rates cover
all shadow traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from guardstream.contracts.events import ShadowRecord, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.feedback.curation import capped_ids, judging_labels


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    min_samples: int = 200  # shadow-scored content keys before the candidate is judged
    min_labelled: int = 30  # … of which carry a later human label
    margin: float = 0.02  # accuracy gain over the serving adapter, against human labels
    fpr_tolerance: float = 0.02  # false-positive rate may rise at most this much
    window: timedelta = timedelta(days=14)  # retired when the evidence is short by then
    # A candidate that passed waits in shadow for a recorded human approval
    # (`guardstream feedback approve`) unless the deployment opts into automatic promotion.
    require_approval: bool = True
    min_judges: int = 2  # distinct reviewers agreeing before a label judges (or a QA label)
    reviewer_cap: float = 0.3  # most share of the labelled keys one reviewer's labels may be


@dataclass(frozen=True, slots=True)
class ShadowMetrics:
    candidate: str
    serving: str | None
    shadowed: int  # content keys scored in shadow against the serving adapter
    stale: int  # records made against another serving adapter (not counted)
    agreement: float  # candidate verdict == serving verdict, over `shadowed`
    serving_block_rate: float  # unsafe, over `shadowed`
    candidate_block_rate: float
    labelled: int  # shadowed keys with a human label
    serving_accuracy: float  # verdict == human label, over `labelled`
    candidate_accuracy: float
    human_safe: int  # labelled keys the human called safe
    serving_false_positive_rate: float  # unsafe where the human said safe, over `human_safe`
    candidate_false_positive_rate: float
    capped: int = 0  # labelled keys left out so that no reviewer exceeds `reviewer_cap`

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def _rate(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def shadow_metrics(
    records: Iterable[ShadowRecord],
    labels: Sequence[FeedbackSample],
    candidate: str,
    serving: str | None,
    min_judges: int = 2,
    reviewer_cap: float = 1.0,
) -> ShadowMetrics:
    """Metrics of `candidate` against `serving` (None: the base model); `labels` oldest first,
    of which those that `evaluation_truth` accepts are the truth."""
    observed: dict[str, ShadowRecord] = {}
    stale: set[str] = set()
    for record in records:
        if record.candidate_adapter != candidate:
            continue
        if record.serving_adapter != serving:
            stale.add(record.content_key)
            continue
        observed.setdefault(record.content_key, record)  # a key scored again is one sample
    # Only labels fit to judge: two reviewers agreeing, or a senior's QA re-review.
    judging = judging_labels(labels, min_judges)
    shadowed = [(key, judging[key].reviewer, key) for key in observed if key in judging]
    kept = capped_ids(shadowed, reviewer_cap)
    human = {key: judging[key].human_verdict for key in kept}
    n = len(observed)
    agree = sum(r.candidate_verdict is r.serving_verdict for r in observed.values())
    serving_blocks = sum(r.serving_verdict is Verdict.UNSAFE for r in observed.values())
    candidate_blocks = sum(r.candidate_verdict is Verdict.UNSAFE for r in observed.values())
    labelled = [(r, human[key]) for key, r in observed.items() if key in human]
    safe = [(r, truth) for r, truth in labelled if truth is Verdict.SAFE]
    return ShadowMetrics(
        candidate=candidate,
        serving=serving,
        shadowed=n,
        stale=len(stale - observed.keys()),
        agreement=_rate(agree, n),
        serving_block_rate=_rate(serving_blocks, n),
        candidate_block_rate=_rate(candidate_blocks, n),
        labelled=len(labelled),
        serving_accuracy=_rate(sum(r.serving_verdict is t for r, t in labelled), len(labelled)),
        candidate_accuracy=_rate(sum(r.candidate_verdict is t for r, t in labelled), len(labelled)),
        human_safe=len(safe),
        serving_false_positive_rate=_rate(
            sum(r.serving_verdict is Verdict.UNSAFE for r, _ in safe), len(safe)
        ),
        candidate_false_positive_rate=_rate(
            sum(r.candidate_verdict is Verdict.UNSAFE for r, _ in safe), len(safe)
        ),
        capped=len(shadowed) - len(kept),
    )


class ShadowOutcome(StrEnum):
    PROMOTE = "promote"
    RETIRE = "retire"
    KEEP = "keep"  # not enough evidence yet: keep shadowing


def shadow_decision(
    metrics: ShadowMetrics, config: ShadowConfig, since: datetime, now: datetime
) -> tuple[ShadowOutcome, str]:
    """Promote only with enough evidence and a win by the margin without more false positives
    than tolerated; retire a loser, or a candidate still short of evidence after the window."""
    m = metrics
    if m.shadowed < config.min_samples or m.labelled < config.min_labelled:
        short = (
            f"{m.shadowed} shadow samples ({m.labelled} human-labelled); judging needs "
            f"{config.min_samples} ({config.min_labelled} labelled)"
        )
        if now - since >= config.window:
            return (
                ShadowOutcome.RETIRE,
                f"{short}, and its {config.window / timedelta(days=1):g}-day window ended",
            )
        return ShadowOutcome.KEEP, short
    gain = m.candidate_accuracy - m.serving_accuracy
    if gain < config.margin:
        return ShadowOutcome.RETIRE, (
            f"shadow accuracy {m.candidate_accuracy:.3f} vs serving {m.serving_accuracy:.3f} "
            f"on {m.labelled} labelled: gain {gain:+.3f} below the margin {config.margin:.3f}"
        )
    rise = m.candidate_false_positive_rate - m.serving_false_positive_rate
    if rise > config.fpr_tolerance:
        return ShadowOutcome.RETIRE, (
            f"false-positive rate rose {rise:.3f} ({m.serving_false_positive_rate:.3f} → "
            f"{m.candidate_false_positive_rate:.3f}), more than the tolerance "
            f"{config.fpr_tolerance:.3f}"
        )
    return ShadowOutcome.PROMOTE, (
        f"shadow accuracy {m.serving_accuracy:.3f} → {m.candidate_accuracy:.3f} (+{gain:.3f}) "
        f"on {m.labelled} labelled of {m.shadowed}; false positives "
        f"{m.serving_false_positive_rate:.3f} → {m.candidate_false_positive_rate:.3f}; "
        f"agreement {m.agreement:.3f}"
    )
