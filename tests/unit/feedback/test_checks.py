"""Checks and balances in what the loop learns from and is judged on: a tenant's adapter
trains on its own archive unless it opted into the shared pool; a single label trains but does
not judge (held-out set, shadow gate); no reviewer holds more than the cap of any set."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardstream.contracts.events import ReviewStage, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.feedback.curation import (
    Curated,
    CurationConfig,
    cap_per_reviewer,
    curate,
    evaluation_truth,
)
from guardstream.feedback.job import FeedbackConfig, run_cycle, training_tenants
from guardstream.feedback.shadow import shadow_metrics
from guardstream.model.adapters import AdapterRegistry
from guardstream.verdict.archive import Archive
from tests.unit.feedback.test_shadow import T0, label, record

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE


def test_a_tenants_run_learns_only_from_its_own_archive_unless_it_joined_the_pool(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path / "feedback")
    # Corrections (curated: the model said controversial) of three tenants.
    archive.append(
        [label(n, S, tenant="acme") for n in range(3)]
        + [label(n, U, tenant="beta") for n in range(10, 15)]
        + [label(n, S, tenant="gamma") for n in range(20, 27)]
    )
    registry = AdapterRegistry(tmp_path / "adapters")
    now = T0 + timedelta(days=1)

    def curated(tenant: str, pool: frozenset[str] = frozenset()) -> int:
        # A threshold no archive here reaches: the run reports what it counted, trains nothing.
        config = FeedbackConfig(min_samples=1000, shared_pool=pool)
        report = run_cycle(archive, tmp_path / "no-model", registry, now, config, tenant=tenant)
        assert report.status == "skipped"
        return report.new_curated

    assert curated("acme") == 3
    assert curated("beta") == 5
    assert curated("acme", frozenset({"beta"})) == 3  # beta's opt-in does not open acme's
    assert curated("acme", frozenset({"acme", "beta"})) == 8  # both joined: one pool
    assert curated("gamma", frozenset({"acme", "beta"})) == 7  # not a member: its own only
    assert curated("*") == 15  # the adapter serving every tenant
    assert training_tenants("acme", frozenset()) == {"acme"}
    assert training_tenants("acme", frozenset({"acme", "beta"})) == {"acme", "beta"}
    assert training_tenants("*", frozenset({"acme"})) is None


# Hostile-looking reviewer ids as the archive may hold them (any printable line).
REVIEWERS = ("rv-1", "rv-2", "审核员-3", "rv 4", "x" * 128, "rv-6")
Review = tuple[int, int, Verdict, bool, bool]  # post, reviewer, human label, QA?, model sure?


def archive_of(reviews: list[Review]) -> list[FeedbackSample]:
    return [
        label(
            post,
            human,
            minutes=i,
            reviewer=REVIEWERS[who],
            stage=ReviewStage.QA if qa else ReviewStage.FIRST,
            pred_verdict=human if sure else C,
            pred_confidence=0.99 if sure else None,
        )
        for i, (post, who, human, qa, sure) in enumerate(reviews)
    ]


reviews_st = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.integers(0, len(REVIEWERS) - 1),
        st.sampled_from(list(Verdict)),
        st.booleans(),
        st.booleans(),
    ),
    max_size=80,
)
# One reviewer floods corrections, a few others label one post each; posts 50+ are
# 100+ confirmed by two reviewers each, post 60 by a senior's QA.
FLOOD: list[Review] = [
    *[(n, 0, S, False, False) for n in range(30)],
    *[(40 + k, k, U, False, False) for k in range(1, 4)],
    *[(100 + k, w, S, False, False) for k in range(20) for w in (1 + k % 5, 1 + (k + 1) % 5)],
    (60, 3, U, True, False),
]


def judging_keys(samples: list[FeedbackSample]) -> set[str]:
    """Independently of the code under test: keys whose latest-ranked label is a QA one or was
    given by two distinct reviewers."""
    out = set()
    for key in {s.content_key for s in samples}:
        own = [s for s in samples if s.content_key == key]
        won = max(own, key=lambda s: (s.stage is ReviewStage.QA, s.reviewed_at, s.sample_id))
        agreeing = {s.reviewer for s in own if s.human_verdict is won.human_verdict}
        if won.stage is ReviewStage.QA or len(agreeing) >= 2:
            out.add(key)
    return out


@settings(max_examples=60, deadline=None)
@given(reviews=reviews_st, cap=st.sampled_from([0.3, 0.25, 0.5, 0.34, 1.0]))
@example(reviews=FLOOD, cap=0.3)
@example(reviews=[(1, 0, S, False, False), (2, 0, U, False, False)], cap=0.3)
@example(reviews=[], cap=0.3)
def test_no_reviewer_exceeds_the_cap_and_only_agreed_or_qa_labels_judge(
    reviews: list[Review], cap: float
) -> None:
    samples = archive_of(reviews)
    config = CurationConfig(reviewer_cap=cap, anchor_ratio=1.0)
    out = curate(samples, config)
    sets = {
        "train": out.train,
        "held_out": out.held_out,
        "anchor_train": out.anchor_train,
        "anchor_held_out": out.anchor_held_out,
    }
    for name, items in sets.items():
        for reviewer, n in out.contributions[name].items():
            assert n <= cap * len(items) + 1e-9, (name, reviewer, n, len(items))
        assert sum(out.contributions[name].values()) == len(items)
    everything = out.train + out.anchor_train  # the training set as a whole, too
    for reviewer in REVIEWERS:
        mine = sum(c.sample.reviewer == reviewer for c in everything)
        assert mine <= cap * len(everything) + 1e-9
    judging = judging_keys(samples)
    assert {c.sample.content_key for c in out.held_out + out.anchor_held_out} <= judging
    assert set(evaluation_truth(samples)) == judging
    # Nothing vanishes unaccounted: capped + kept == what was selected before the cap.
    uncapped = curate(samples, CurationConfig(reviewer_cap=1.0, anchor_ratio=1.0))
    assert uncapped.capped == 0
    kept = sum(len(v) for v in sets.values())
    uncapped_sets = (uncapped.train, uncapped.held_out, uncapped.anchor_train)
    assert kept + out.capped == sum(map(len, uncapped_sets)) + len(uncapped.anchor_held_out)


def test_a_flooding_reviewer_is_cut_to_the_cap_and_cannot_judge_alone() -> None:
    samples = archive_of(FLOOD)
    # A larger held-out share and a cap of 0.4, so that the few confirmed labels held out
    # (from three reviewers) form a set at all; the flood is cut all the same.
    config = CurationConfig(anchor_ratio=0, held_out_fraction=0.5, reviewer_cap=0.4)
    out = curate(samples, config)
    # 30 single-labelled corrections by rv-1: none may judge, so none is held out.
    assert "rv-1" not in out.contributions["held_out"]
    assert out.held_out  # the confirmed ones judge
    assert {c.sample.content_key for c in out.held_out} <= judging_keys(samples)
    train = out.contributions["train"]
    assert train["rv-1"] <= 0.4 * len(out.train)
    assert out.capped >= 20  # most of the flood is left out
    # The shadow gate judges by the same truth: rv-1's lone labels count for nothing.
    records = [record(n, C, S) for n in (*range(30), 100, 60)]
    m = shadow_metrics(records, samples, "cand", None)
    assert m.labelled == 2  # post 100 (two reviewers) and post 60 (a senior's QA label)
    assert shadow_metrics(records, samples, "cand", None, min_judges=1).labelled == 32


def test_the_cap_keeps_the_largest_set_it_can() -> None:
    flood = archive_of([(n, 0, S, False, False) for n in range(10)])
    others = archive_of([(20 + k, k, S, False, False) for k in range(1, 4)])
    items = [Curated(s, 1.0, "disagreement") for s in flood + others]
    kept, left_out = cap_per_reviewer(items, 0.3)
    # 4 of 13: one each (1 ≤ 0.3·4); 5 would allow only one each of four reviewers.
    assert (len(kept), left_out) == (4, 9)
    assert len({c.sample.reviewer for c in kept}) == 4
    assert cap_per_reviewer(items[:10], 0.3) == ([], 10)  # one reviewer alone: no set at all
    assert cap_per_reviewer(items, 1.0) == (items, 0)
