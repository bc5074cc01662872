"""What counts in an author's history, and how authors are named in keys (pure parts; the
Redis store runs in tests/integration/triage/test_graded_actions.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.events import Action, Decision, Source, Verdict, utcnow
from guardstream.verdict.author_history import model_kind
from guardstream.verdict.erasure import author_key

pytestmark = pytest.mark.unit


def decision(verdict: Verdict, source: Source, rule: str = "verdict") -> Decision:
    return Decision.make(
        decision_id="d",
        at=utcnow(),
        post_id="p",
        post_event_id="e",
        tenant="t",
        verdict=verdict,
        action=Action.REVIEW,
        reason="r",
        rule=rule,
        source=source,
        model="m",
        adapter=None,
        policy="p@1",
        content_key="a" * 32,
    )


@pytest.mark.parametrize(
    ("verdict", "source", "rule", "kind"),
    [
        (Verdict.UNSAFE, Source.MODEL, "verdict", "unsafe"),
        (Verdict.UNSAFE, Source.CACHE, "rule:x", "unsafe"),
        (Verdict.CONTROVERSIAL, Source.MODEL, "verdict", "controversial"),
        (Verdict.SAFE, Source.MODEL, "verdict", None),
        (Verdict.UNSAFE, Source.CACHE, "human_verdict", "confirmed_unsafe"),
        (Verdict.SAFE, Source.CACHE, "human_verdict", None),
        (Verdict.UNSAFE, Source.HUMAN, "human", "confirmed_unsafe"),
        # Nobody judged these: they say nothing about the author.
        (Verdict.CONTROVERSIAL, Source.RULE, "deadline", None),
        (Verdict.SAFE, Source.SLA_TIMEOUT, "review_sla", None),
    ],
)
def test_what_a_decision_counts_as(
    verdict: Verdict, source: Source, rule: str, kind: str | None
) -> None:
    assert model_kind(decision(verdict, source, rule)) == kind


@given(tenant=st.sampled_from(["a", "b"]), author=st.text(min_size=1, max_size=200))
def test_authors_are_named_by_a_tenant_bound_hash(tenant: str, author: str) -> None:
    hashed = author_key(tenant, author)
    assert len(hashed) == 32 and int(hashed, 16) >= 0
    assert hashed != author_key("other", author)
    assert author_key(tenant, author) == hashed
