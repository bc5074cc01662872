"""Monthly QA (the seeds' 质检): senior reviewers re-review a sample of decided items, and
reviewers whose agreement with the seniors falls below the bar raise an alert (pure).

`qa_sample` picks which first reviews to re-review: the same number from each reviewer where
possible (a quiet reviewer is checked too), deterministically for a given month and seed.
`agreement_alerts` compares each first review with its QA re-review (same content key) and
names the reviewers below `min_agreement` — by pseudonymous id only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from guardstream.core.contracts import Alert, AlertSeverity, ReviewStage, utcnow
from guardstream.feedback.sample import FeedbackSample


def _order(sample: FeedbackSample, seed: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{sample.sample_id}".encode(), digest_size=8).digest()


def qa_sample(samples: Sequence[FeedbackSample], size: int, seed: str) -> list[FeedbackSample]:
    """Up to `size` first-stage reviews, spread evenly over reviewers (round-robin)."""
    checked = {s.content_key for s in samples if s.stage is ReviewStage.QA}
    by_reviewer: dict[str, list[FeedbackSample]] = defaultdict(list)
    for s in samples:
        if s.stage is ReviewStage.FIRST and s.content_key not in checked:
            by_reviewer[s.reviewer].append(s)
    queues = [
        sorted(items, key=lambda s: _order(s, seed)) for _, items in sorted(by_reviewer.items())
    ]
    picked: list[FeedbackSample] = []
    while len(picked) < size and any(queues):
        for queue in queues:
            if queue and len(picked) < size:
                picked.append(queue.pop(0))
    return picked


def agreement(samples: Sequence[FeedbackSample]) -> dict[str, tuple[int, int]]:
    """Reviewer → (agreed, checked) against senior QA re-reviews of the same content."""
    first = {s.content_key: s for s in samples if s.stage is ReviewStage.FIRST}
    out: dict[str, tuple[int, int]] = {}
    for s in samples:
        original = first.get(s.content_key) if s.stage is ReviewStage.QA else None
        if original is None:
            continue
        agreed, checked = out.get(original.reviewer, (0, 0))
        out[original.reviewer] = (agreed + (original.human_verdict is s.human_verdict), checked + 1)
    return out


def agreement_alerts(
    samples: Sequence[FeedbackSample],
    min_agreement: float,
    period: str,
    now: datetime | None = None,
) -> list[Alert]:
    """One alert for the period when overall agreement is below the bar, naming the reviewers
    below it; none when every checked reviewer meets it. `period` (e.g. "2026-11") makes the
    alert id deterministic: re-running the check never raises the same alert twice."""
    scores = agreement(samples)
    agreed = sum(a for a, _ in scores.values())
    checked = sum(c for _, c in scores.values())
    if not checked or agreed / checked >= min_agreement:
        return []
    low = sorted(r for r, (a, c) in scores.items() if a / c < min_agreement)
    at = now or utcnow()
    digest = hashlib.sha256(f"qa_agreement_low:{period}".encode()).hexdigest()[:24]
    return [
        Alert(
            event_id=f"alert-{digest}",
            produced_at=at,
            alert_id=f"qa-{digest}",
            kind="qa_agreement_low",
            severity=AlertSeverity.WARNING,
            summary=(
                f"QA {period}: reviewers agree with senior re-reviews on {agreed} of {checked} "
                f"items ({agreed / checked:.0%}, bar {min_agreement:.0%}); below the bar: "
                f"{', '.join(low)}"
            )[:500],
            labels={"period": period, "reviewers": ",".join(low)[:200]},
            raised_at=at,
        )
    ]
