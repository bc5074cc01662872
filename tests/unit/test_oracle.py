"""The reliability oracle judges emissions per post: a run in which one post is emitted far more
often than its scenario allows fails, however few the other posts' emissions are (a bound on the
run's total emissions, which the oracle once used, let one post be emitted hundreds of times)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.oracle import Verdicts, assert_invariants, emission_bound
from tests.support.sla_oracle import SlaOutcome, assert_sla_invariants

pytestmark = pytest.mark.unit


def verdicts(counts: list[int]) -> Verdicts:
    """Post i emitted counts[i] times, always the same decision."""
    out = Verdicts()
    for i, n in enumerate(counts):
        key = (f"p-{i}", "default@1")
        out.decisions[key].add(f"decision of p-{i}".encode())
        out.emitted[key] += n
    return out


def test_the_bound_is_copies_times_one_plus_redeliveries() -> None:
    assert emission_bound() == 1
    assert emission_bound(redeliveries=1) == 2
    assert emission_bound(redeliveries=2) == 3
    assert emission_bound(copies=3) == 3
    assert emission_bound(redeliveries=1, copies=2) == 4


def test_one_post_emitted_hundreds_of_times_fails_a_run_that_is_small_in_total() -> None:
    counts = [1] * 299 + [300]  # 599 emissions for 300 posts: under "4 x posts"
    assert sum(counts) <= 4 * len(counts)
    run = verdicts(counts)
    assert run.re_emissions == 299 and run.re_emitted() == {("p-299", "default@1"): 300}
    assert run.figures()["most_emissions_of_a_post"] == 300
    with pytest.raises(AssertionError, match="1 posts emitted more than 2 times"):
        assert_invariants(run, {f"p-{i}" for i in range(300)}, max_emissions_per_post=2)


@given(
    counts=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=40),
    redeliveries=st.integers(min_value=0, max_value=3),
)
def test_the_oracle_holds_exactly_when_no_post_passes_its_bound(
    counts: list[int], redeliveries: int
) -> None:
    run = verdicts(counts)
    bound = emission_bound(redeliveries=redeliveries)
    assert run.re_emissions == sum(counts) - len(counts)
    posts = {f"p-{i}" for i in range(len(counts))}
    if max(counts) <= bound:
        assert_invariants(run, posts, max_emissions_per_post=bound)
    else:
        with pytest.raises(AssertionError, match="emitted more than"):
            assert_invariants(run, posts, max_emissions_per_post=bound)


def test_a_crash_free_run_allows_no_re_emission_at_all() -> None:
    with pytest.raises(AssertionError, match="emitted more than 1 times"):
        assert_invariants(
            verdicts([1, 1, 2, 1]), {"p-0", "p-1", "p-2", "p-3"}, max_emissions_per_post=1
        )


def sla_outcome(counts: dict[str, int]) -> SlaOutcome:
    out = SlaOutcome()
    for post_id, n in counts.items():
        out.downgrades[post_id].add(f"downgrade of {post_id}".encode())
        out.downgrades_emitted[post_id] += n
        out.events[(post_id, "expired")].add(f"expired {post_id}".encode())
        out.alerts[(post_id, "sla_breach")].add(f"alert {post_id}".encode())
    return out


def test_the_sla_oracle_bounds_downgrades_per_post() -> None:
    counts = {f"p-{i}": 1 for i in range(50)} | {"p-hot": 40}
    outcome = sla_outcome(counts)
    assert outcome.re_emissions == 39
    assert_sla_invariants(
        sla_outcome({"p-0": 2}), expired={"p-0"}, in_time=set(), max_emissions_per_post=2
    )
    with pytest.raises(AssertionError, match="more than 2 times"):
        assert_sla_invariants(outcome, expired=set(counts), in_time=set(), max_emissions_per_post=2)
