"""QA audits (the seeds' 质检): senior reviewers re-review a sample of decided items, and
reviewers whose agreement with the seniors falls below the bar raise an alert (pure).

`spread` picks which first reviews to re-review: the same number from each reviewer where
possible (a quiet reviewer is checked too), deterministically for a given period (the seed).
`low_agreement_alert` names the reviewers whose per-reviewer agreement with the seniors is
below `min_agreement` — by pseudonymous id only, one alert per period. The review console
(`review/service.py`) runs these on its QA queue in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from guardstream.contracts import ids
from guardstream.contracts.events import Alert, AlertSeverity, clip
from guardstream.contracts.ids import stable_id

T = TypeVar("T")
Cadence = Literal["monthly", "weekly"]


def _order(ident: str, seed: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{ident}".encode(), digest_size=8).digest()


def spread(
    items: Sequence[T], size: int, seed: str, *, ident: Callable[[T], str], by: Callable[[T], str]
) -> list[T]:
    """Up to `size` items, round-robin over `by` (the reviewer), each reviewer's items in a
    seeded hash order: the same input and seed give the same pick in any input order."""
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        groups[by(item)].append(item)
    queues = [sorted(g, key=lambda i: _order(ident(i), seed)) for _, g in sorted(groups.items())]
    picked: list[T] = []
    while len(picked) < size and any(queues):
        for queue in queues:
            if queue and len(picked) < size:
                picked.append(queue.pop(0))
    return picked


@dataclass(frozen=True, slots=True)
class QaPeriod:
    """The reviews a QA batch samples: first reviews given in [start, end)."""

    key: str  # "2026-11" (monthly) or "2026-W47" (weekly): the batch's name and seed
    start: datetime
    end: datetime


def previous_period(now: datetime, cadence: Cadence) -> QaPeriod:
    """The last period that has fully ended at `now` (UTC): what is due for sampling."""
    now = now.astimezone(UTC)
    if cadence == "weekly":
        this_monday = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(
            days=now.weekday()
        )
        start = this_monday - timedelta(days=7)
        year, week, _ = start.isocalendar()
        return QaPeriod(f"{year:04d}-W{week:02d}", start, this_monday)
    end = datetime(now.year, now.month, 1, tzinfo=UTC)
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return QaPeriod(f"{year:04d}-{month:02d}", datetime(year, month, 1, tzinfo=UTC), end)


def parse_period(key: str) -> QaPeriod:
    """`YYYY-MM` (a month) or `YYYY-Www` (an ISO week) → that period; ValueError otherwise."""
    week = re.fullmatch(r"(\d{4})-W(\d{2})", key)
    if week:
        start = datetime.fromisocalendar(int(week[1]), int(week[2]), 1).replace(tzinfo=UTC)
        return QaPeriod(key, start, start + timedelta(days=7))
    month = re.fullmatch(r"(\d{4})-(0[1-9]|1[0-2])", key)
    if not month:
        raise ValueError(f"a QA period is YYYY-MM or YYYY-Www, not {key[:40]!r}")
    year, mon = int(month[1]), int(month[2])
    start = datetime(year, mon, 1, tzinfo=UTC)
    return QaPeriod(key, start, datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC))


def below_bar(scores: Mapping[str, tuple[int, int]], min_agreement: float) -> list[str]:
    """Reviewers checked at least once whose agreement is below the bar, sorted."""
    return sorted(r for r, (a, c) in scores.items() if c and a / c < min_agreement)


def low_agreement_alert(
    scores: Mapping[str, tuple[int, int]], min_agreement: float, period: str, now: datetime
) -> Alert | None:
    """One alert for the period when any checked reviewer's agreement (reviewer → (agreed,
    checked)) is below the bar, naming those reviewers; None when all meet it. Per reviewer,
    not overall: one careless reviewer among ten careful ones must not average away. `period`
    makes the alert id deterministic: re-running the check never raises the same alert twice."""
    low = below_bar(scores, min_agreement)
    if not low:
        return None
    agreed = sum(a for a, _ in scores.values())
    checked = sum(c for _, c in scores.values())
    each = ", ".join(f"{r} {scores[r][0]}/{scores[r][1]}" for r in low)
    digest = stable_id(ids.QA_ALERT, period)
    return Alert(
        event_id=f"alert-{digest}",
        produced_at=now,
        alert_id=f"qa-{digest}",
        kind="qa_agreement_low",
        severity=AlertSeverity.WARNING,
        summary=clip(
            Alert,
            "summary",
            f"QA {period}: reviewers agree with senior re-reviews on {agreed} of {checked} "
            f"items ({agreed / checked:.0%}); below the bar of {min_agreement:.0%}: {each}",
        ),
        labels={"period": period, "reviewers": ",".join(low)[:200]},
        raised_at=now,
    )
