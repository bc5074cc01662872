"""A reviewer who floods wrong labels is named (`feedback/reviewers.py`), the gate rejects a
candidate holding a suspect's labels (`job.suspect_gate`), and the shadow gate's labelled set
is capped per reviewer like the curated sets. Hypothesis checks the audit against an
independent count on arbitrary archives."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings

from guardstream.contracts.events import Verdict
from guardstream.feedback.job import suspect_gate
from guardstream.feedback.reviewers import SuspectConfig, audit_reviewers
from guardstream.feedback.shadow import shadow_metrics
from tests.unit.feedback.test_checks import FLOOD, REVIEWERS, Review, archive_of, reviews_st
from tests.unit.feedback.test_shadow import label, record

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE

# Two honest reviewers confirm the model on posts 0-9 (unsafe); reviewer 2 later relabels all
# ten safe.
POISONED: list[Review] = [
    *[(n, w, U, False, True) for n in range(10) for w in (0, 1)],
    *[(n, 2, S, False, False) for n in range(10)],
]
# Everyone disagrees on a hard batch: reviewers 0 and 1 split on every post.
SPLIT: list[Review] = [(n, w, (U, S)[w], False, False) for n in range(10) for w in (0, 1)]


def independent(reviews: list[Review]) -> dict[str, tuple[int, int]]:
    """(overlaps, disagreements) per reviewer, counted from the raw tuples: a reviewer's label
    is their QA tuple for the post if any, else their last; the others' label is the last QA
    one among theirs, else their majority (a tie: not counted)."""
    last: dict[tuple[int, int], tuple[bool, int, Verdict]] = {}
    for i, (post, who, human, qa, _) in enumerate(reviews):
        last[(post, who)] = max(last.get((post, who), (False, -1, human)), (qa, i, human))
    out: dict[str, tuple[int, int]] = {}
    for (post, who), (_, _, human) in last.items():
        others = [v for (p, w), v in last.items() if p == post and w != who]
        o, d = out.get(REVIEWERS[who], (0, 0))
        qa = [v for v in others if v[0]]
        if qa:
            theirs: Verdict | None = max(qa)[2]
        else:
            tally = {v: sum(x[2] is v for x in others) for v in Verdict}
            top = max(tally.values(), default=0)
            leaders = [v for v, n in tally.items() if n == top and n > 0]
            theirs = leaders[0] if len(leaders) == 1 else None
        if theirs is not None:
            o, d = o + 1, d + (theirs is not human)
        out[REVIEWERS[who]] = (o, d)
    return out


@settings(max_examples=60, deadline=None)
@given(reviews=reviews_st)
@example(reviews=POISONED)
@example(reviews=SPLIT)
@example(reviews=FLOOD)
@example(reviews=[])
def test_the_audit_counts_disagreement_with_the_other_judges(reviews: list[Review]) -> None:
    config = SuspectConfig()
    standings = audit_reviewers(archive_of(reviews), config)
    counted = independent(reviews)
    assert {s.reviewer: (s.overlaps, s.disagreements) for s in standings} == counted
    total_o = sum(o for o, _ in counted.values())
    total_d = sum(d for _, d in counted.values())
    for s in standings:
        rest = total_o - s.overlaps
        others = (total_d - s.disagreements) / rest if rest else 0.0
        assert s.others_rate == pytest.approx(others)
        assert s.suspect == (
            s.overlaps >= config.min_overlap
            and s.disagreement_rate >= config.rate
            and s.disagreement_rate >= config.ratio * others
        )
    assert [s.suspect for s in standings] == sorted((s.suspect for s in standings), reverse=True)
    if reviews == POISONED:
        (suspect,) = [s for s in standings if s.suspect]
        assert (suspect.reviewer, suspect.disagreement_rate, suspect.others_rate) == (
            REVIEWERS[2],
            1.0,
            0.0,
        )
        assert suspect.correction_share == 1.0  # only hers overrule the model
        assert "10 of 10" in suspect.describe()
    if reviews == SPLIT:
        assert not any(s.suspect for s in standings)  # a hard batch flags no one


def test_the_gate_rejects_a_candidate_holding_a_suspects_labels() -> None:
    (suspect, *_) = audit_reviewers(archive_of(POISONED))
    assert suspect.suspect
    inside = {"train": {suspect.reviewer: 3, "rv-1": 7}, "held_out": {"rv-1": 2}}
    wins, why = suspect_gate(True, "held-out accuracy 0.5 → 0.9", [suspect], inside)
    assert not wins
    assert suspect.reviewer in why and "held-out accuracy 0.5 → 0.9" in why
    outside = {"train": {"rv-1": 7}, "held_out": {"rv-1": 2}}
    wins, why = suspect_gate(True, "ok", [suspect], outside)
    assert wins and "none of their labels used" in why and suspect.reviewer in why
    assert suspect_gate(True, "ok", [], inside) == (True, "ok")


def test_the_shadow_gate_caps_each_reviewers_share_of_the_labelled_keys() -> None:
    # 10 keys confirmed by a and (later, the winning label) b; 2 keys by c and then d.
    labels = [
        *[label(n, S, minutes=m, reviewer=r) for n in range(10) for m, r in ((0, "a"), (1, "b"))],
        *[label(n, S, minutes=m, reviewer=r) for n in (20, 21) for m, r in ((0, "c"), (1, "d"))],
    ]
    records = [record(n, C, S) for n in (*range(10), 20, 21)]
    uncapped = shadow_metrics(records, labels, "cand", None)
    assert (uncapped.labelled, uncapped.capped) == (12, 0)
    # b's winning labels may be at most half: d's 2 and 2 of b's (n = 4: floor(n/2) = 2 each).
    half = shadow_metrics(records, labels, "cand", None, reviewer_cap=0.5)
    assert (half.labelled, half.capped) == (4, 8)
    # Two reviewers cannot make a set in which neither holds more than 30 %: nothing judges.
    assert shadow_metrics(records, labels, "cand", None, reviewer_cap=0.3).labelled == 0
