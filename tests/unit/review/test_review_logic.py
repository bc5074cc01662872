"""The review console's pure rules: submissions, roles, ids, events, SLA display, sessions."""

from __future__ import annotations

import base64
from datetime import timedelta

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guardstream.contracts.events import (
    REVIEW_REASON_MAX,
    Action,
    ReviewOutcome,
    ReviewStage,
    Source,
    Verdict,
)
from guardstream.policy import ControversialMode, load_registry
from guardstream.policy.pack import ReasonRequired
from guardstream.review import auth
from guardstream.review.logic import (
    SEED_TAGS,
    InvalidSubmission,
    Permission,
    Reviewer,
    Role,
    SlaState,
    agreement,
    countdown,
    human_decision,
    human_verdict_entry,
    parse_tags,
    read_form,
    review_event,
    review_id,
    task_id,
    validate_submission,
)
from guardstream.verdict.decisions import human_action
from tests.support.review import NOW, review_task

pytestmark = pytest.mark.unit

TAGS = SEED_TAGS


def submit(**kw: object) -> object:
    """A console form (strings, as the browser sends them) read and validated against a
    controversial model verdict."""
    fields: dict[str, object] = {
        "outcome": "confirm",
        "verdict": None,
        "reason": "政治隐喻,模型判断合理",
        "tags": ["政治隐喻"],
        "categories": None,
        "refusal": None,
    }
    context: dict[str, object] = {
        "model_verdict": Verdict.CONTROVERSIAL,
        "model_categories": ("Politically Sensitive Topics",),
        "allowed_tags": TAGS,
        "is_response": False,
    }
    for key, value in kw.items():
        (fields if key in fields else context)[key] = value
    return validate_submission(read_form(**fields), **context)  # type: ignore[arg-type]


def test_confirm_keeps_the_model_label_and_categories() -> None:
    sub = submit()
    assert sub.outcome is ReviewOutcome.CONFIRM  # type: ignore[attr-defined]
    assert sub.verdict is Verdict.CONTROVERSIAL  # type: ignore[attr-defined]
    assert sub.categories == ("Politically Sensitive Topics",)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"outcome": "maybe"}, "outcome"),
        ({"outcome": None}, "outcome"),
        ({"outcome": "correct", "verdict": "unsafe", "reason": None}, "reason"),  # no reason
        ({"outcome": "confirm", "reason": None}, "reason"),  # the default pack: always
        ({"outcome": "confirm", "reason": " \t "}, "reason"),
        ({"outcome": "correct", "verdict": "unsafe", "reason": "   "}, "reason"),
        ({"outcome": "correct", "verdict": "unsafe", "reason": "x" * 51}, "reason"),
        ({"outcome": "correct", "verdict": "controversial", "reason": "same"}, "verdict"),
        ({"outcome": "correct", "verdict": "bogus", "reason": "r"}, "verdict"),
        ({"outcome": "confirm", "verdict": "unsafe"}, "verdict"),
        ({"tags": []}, "tags"),
        ({"tags": ["  "]}, "tags"),
        ({"tags": ["not-a-tag"]}, "tags"),
    ],
)
def test_invalid_submissions_say_which_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSubmission) as err:
        submit(**kw)
    assert err.value.field == field
    assert err.value.message


def test_a_pack_may_relax_the_reason_to_corrections_only() -> None:
    relaxed = ReasonRequired.WHEN_CORRECTING
    sub = submit(reason=None, reason_required=relaxed)
    assert sub.outcome is ReviewOutcome.CONFIRM and sub.reason is None  # type: ignore[attr-defined]
    with pytest.raises(InvalidSubmission) as err:
        submit(outcome="correct", verdict="unsafe", reason="", reason_required=relaxed)
    assert err.value.field == "reason" and "correction" in err.value.message
    with pytest.raises(InvalidSubmission) as err:
        submit(reason="", reason_required=ReasonRequired.ALWAYS)
    assert err.value.field == "reason" and "every decision" in err.value.message
    assert load_registry(None).default.reason_required is ReasonRequired.ALWAYS  # the seeds


# What a reason may not hold: NUL and other C0/C1 controls (not tab/newline), lone surrogates.
_FORBIDDEN = st.one_of(
    st.sampled_from(["\x00", "\x1b", "\x7f", "\x85", "\ud800", "\udfff"]),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.characters(min_codepoint=0, max_codepoint=8),
)


@given(
    head=st.text(max_size=20),
    bad=_FORBIDDEN,
    tail=st.text(max_size=20),
    outcome=st.sampled_from(["confirm", "correct"]),
)
@example(head="ok", bad="\x00", tail="", outcome="confirm")
@example(head="", bad="\ud800", tail="why", outcome="correct")
@example(head="", bad="\x85", tail="Ô", outcome="correct")  # NEL at an edge: refused, not trimmed
def test_hostile_reasons_are_refused_naming_the_reason(
    head: str, bad: str, tail: str, outcome: str
) -> None:
    verdict = "unsafe" if outcome == "correct" else None
    with pytest.raises(InvalidSubmission) as err:
        submit(outcome=outcome, verdict=verdict, reason=head + bad + tail)
    assert err.value.field == "reason" and err.value.message


@given(
    st.text(min_size=REVIEW_REASON_MAX + 1, max_size=400).filter(
        lambda t: len(t.strip()) > REVIEW_REASON_MAX
    )
)
@example("理" * (REVIEW_REASON_MAX + 1))
def test_overlong_reasons_are_refused_never_cut(reason: str) -> None:
    with pytest.raises(InvalidSubmission) as err:
        submit(reason=reason)
    assert err.value.field == "reason"


def test_a_correction_with_a_50_character_reason_is_valid() -> None:
    sub = submit(outcome="correct", verdict="unsafe", reason="该" * 50, tags=["健康污名"])
    assert sub.verdict is Verdict.UNSAFE  # type: ignore[attr-defined]
    assert sub.reason == "该" * 50  # type: ignore[attr-defined]


def test_safe_has_no_categories() -> None:
    sub = submit(outcome="correct", verdict="safe", reason="satire", tags=["political allusion"])
    assert sub.categories == ()  # type: ignore[attr-defined]


def test_tag_list_is_configurable_and_seeded() -> None:
    assert {"性别歧视", "地域攻击", "健康污名", "政治隐喻"} <= set(SEED_TAGS)
    assert parse_tags(" a, b ,,a, c ") == ("a", "b", "c")


def test_roles() -> None:
    reviewer = Reviewer("r", ("acme",), Role.REVIEWER)
    admin = Reviewer("a", ("*",), Role.ADMIN)
    senior = Reviewer("s", ("acme",), Role.SENIOR)
    assert reviewer.may(Permission.READ_TEXT) and not reviewer.may(Permission.QA)
    assert senior.may(Permission.QA) and senior.may(Permission.DECIDE)
    assert not admin.may(Permission.READ_TEXT) and not admin.may(Permission.DECIDE)
    assert reviewer.sees("acme") and not reviewer.sees("other")
    assert admin.sees("other")


def test_ids_are_deterministic() -> None:
    assert task_id("a", "p1", "pol@1") == task_id("a", "p1", "pol@1") != task_id("a", "p1", "pol@2")
    assert task_id("a", "p1", "pol@1") != task_id("b", "p1", "pol@1")  # tenants never share
    first = review_id("t", ReviewStage.FIRST, "alice")
    assert first == review_id("t", ReviewStage.FIRST, "bob")  # one first review per task
    assert review_id("t", ReviewStage.QA, "alice") != review_id("t", ReviewStage.QA, "bob")


def test_human_action_mapping() -> None:
    packs = load_registry(None)
    pack = packs.default
    assert human_action(pack, Verdict.UNSAFE) is Action.BLOCK
    assert human_action(pack, Verdict.SAFE) is Action.ALLOW
    strict = pack.model_copy(update={"controversial": ControversialMode.STRICT})
    review = pack.model_copy(update={"controversial": ControversialMode.REVIEW})
    assert human_action(strict, Verdict.CONTROVERSIAL) is Action.BLOCK
    assert human_action(review, Verdict.CONTROVERSIAL) is Action.ALLOW  # never back to review
    assert human_action(None, Verdict.UNSAFE) is Action.BLOCK


def test_a_late_unsafe_decision_blocks_and_says_it_was_late() -> None:
    sub = submit(outcome="correct", verdict="unsafe", reason="污名化表达", tags=["健康污名"])
    t = review_task(sla=SlaState.EXPIRED)
    decision = human_decision(t, sub, load_registry(None).default, late=True, at=NOW)  # type: ignore[arg-type]
    assert decision.action is Action.BLOCK
    assert decision.source is Source.HUMAN
    assert decision.rule == "human_review:late"
    assert "after the SLA expired" in decision.reason
    again = human_decision(t, sub, None, late=True, at=NOW + timedelta(seconds=5))  # type: ignore[arg-type]
    assert again.decision_id == decision.decision_id
    review = review_event(t, sub, stage=ReviewStage.FIRST, reviewer="alice", late=True, at=NOW)  # type: ignore[arg-type]
    assert review.late and review.outcome is ReviewOutcome.CORRECT
    assert review.model_verdict is Verdict.CONTROVERSIAL and review.tags == ("健康污名",)
    entry = human_verdict_entry(t, sub, late=True, at=NOW)  # type: ignore[arg-type]
    assert entry.source is Source.HUMAN and entry.verdict is Verdict.UNSAFE


def test_countdown() -> None:
    assert countdown(NOW + timedelta(minutes=65), NOW) == "1h 05m left"
    assert countdown(NOW + timedelta(seconds=250), NOW) == "4m 10s left"
    assert countdown(NOW - timedelta(minutes=3), NOW) == "expired 3m 00s ago"


def test_agreement() -> None:
    result = agreement([(Verdict.SAFE, Verdict.SAFE), (Verdict.UNSAFE, Verdict.SAFE)])
    assert (result.compared, result.agreed, result.rate) == (2, 1, 0.5)
    assert agreement([]).rate is None


def test_passwords_hash_and_verify() -> None:
    stored = auth.hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert auth.verify_password("correct horse", stored)
    assert not auth.verify_password("wrong", stored)
    assert not auth.verify_password("x", "garbage")


def test_sessions_reject_tampering_and_expiry() -> None:
    key = b"k" * 32
    cookie, session = auth.issue_session(key, "alice", 1000.0, 60)
    assert auth.read_session(key, cookie, 1001.0) == session
    assert auth.read_session(key, cookie, 1061.0) is None  # expired
    assert auth.read_session(b"x" * 32, cookie, 1001.0) is None  # other key
    _body, sig = cookie.rsplit(".", 1)
    forged = auth.issue_session(key, "mallory", 1000.0, 60)[0].rsplit(".", 1)[0] + "." + sig
    assert auth.read_session(key, forged, 1001.0) is None
    assert auth.read_session(key, None, 1001.0) is None
    assert auth.csrf_ok(session, session.csrf) and not auth.csrf_ok(session, None)
    assert not auth.csrf_ok(session, "nope")


def test_every_session_names_its_own_server_side_id() -> None:
    key = b"k" * 32
    sids = {auth.issue_session(key, "alice", 1000.0, 60)[1].sid for _ in range(50)}
    assert len(sids) == 50 and all(len(s) >= 43 for s in sids)  # 256 random bits each
    # A validly signed cookie of the earlier, stateless format names no session: refused.
    body = base64.urlsafe_b64encode(orjson.dumps({"r": "alice", "e": 2000, "c": "x"}))
    stateless = f"{body.decode()}.{auth._sign(key, body)}"
    assert auth.read_session(key, stateless, 1001.0) is None


def test_a_response_review_carries_both_refusal_labels() -> None:
    t = review_task(model_verdict=Verdict.SAFE, categories=(), model_refusal=True)
    said = submit(model_verdict=Verdict.SAFE, is_response=True, refusal="no")
    review = review_event(t, said, stage=ReviewStage.FIRST, reviewer="alice", late=False, at=NOW)  # type: ignore[arg-type]
    assert (review.refusal, review.model_refusal) == (False, True)
    assert type(review).from_json(review.to_json()) == review
    assert human_decision(t, said, None, late=False, at=NOW).refusal is False  # type: ignore[arg-type]
    assert human_verdict_entry(t, said, late=False, at=NOW).refusal is False  # type: ignore[arg-type]
    # The reviewer left it: the model's label stands on what is actioned and cached.
    silent = submit(model_verdict=Verdict.SAFE, is_response=True)
    assert (
        review_event(
            t, silent, stage=ReviewStage.FIRST, reviewer="alice", late=False, at=NOW
        ).refusal
        is None
    )  # type: ignore[arg-type]
    assert human_decision(t, silent, None, late=False, at=NOW).refusal is True  # type: ignore[arg-type]
    assert human_verdict_entry(t, silent, late=False, at=NOW).refusal is True  # type: ignore[arg-type]
