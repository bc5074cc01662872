"""The review reference of the API's answer for a contested post (issue 20): the task the
review queue opens for it (one maker, `contracts.ids.review_task_id`, for both) and where to
poll, beside the decision's own fields; no reference for a post that is not held for review,
and none on the Decision the action topics carry."""

from __future__ import annotations

import orjson
import pytest

from guardstream.api.moderator import decision_body, review_reference
from guardstream.contracts.events import Action, Decision, Source, Verdict, utcnow
from guardstream.contracts.ids import review_task_id
from guardstream.policy import load_registry
from guardstream.review.logic import task_id
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide

pytestmark = pytest.mark.unit

PACK = load_registry(None).for_post("acme", None)


def decision(verdict: Verdict, post_id: str = "p-1") -> Decision:
    entry = CachedVerdict(
        verdict=verdict,
        categories=("Politically Sensitive Topics",) if verdict is not Verdict.SAFE else (),
        confidence=0.9,
        reason="r",
        source=Source.MODEL,
        model="tiny",
        decided_at=utcnow(),
    )
    return decide(
        entry,
        Origin.MODEL,
        PACK,
        post_id=post_id,
        post_event_id="e-1",
        tenant="acme",
        content_key="0" * 32,
    )


def test_a_contested_answer_names_the_review_task_and_where_to_poll() -> None:
    contested = decision(Verdict.CONTROVERSIAL, post_id="p/1?x")
    assert contested.action is Action.REVIEW
    body = orjson.loads(decision_body(contested))
    assert body["review"] == {
        "task_id": task_id("acme", "p/1?x", contested.policy),
        "poll": "/v1/decisions/p%2F1%3Fx?tenant=acme",
    }
    # The decision's own fields are unchanged beside it, and the contract ignores the extra.
    assert {k: v for k, v in body.items() if k != "review"} == orjson.loads(contested.to_json())
    assert Decision.from_json(decision_body(contested)) == contested
    assert "review" not in orjson.loads(contested.to_json())  # not on the topics' Decision


def test_a_decision_not_held_for_review_has_no_reference() -> None:
    for verdict in (Verdict.SAFE, Verdict.UNSAFE):
        plain = decision(verdict)
        assert plain.action is not Action.REVIEW
        assert review_reference(plain) is None
        assert decision_body(plain) == plain.to_json()


def test_the_review_queue_and_the_api_share_one_task_id_maker() -> None:
    assert task_id is review_task_id
    # The recipe is pinned: a changed one would give replayed decisions new tasks.
    assert review_task_id("acme", "p-1", "default@1") == "eeffa6fb48511d538e61a0f1934d9f88"
    assert review_task_id("acme", "p-1", "default@1") != review_task_id("other", "p-1", "default@1")
