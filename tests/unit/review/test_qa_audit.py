"""QA audits and the refusal label (pure): periods, the per-reviewer alert, blind QA forms,
and a response correction's archived sample → the exact Qwen3Guard-Gen target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from guardstream.contracts.events import Kind, ReviewOutcome, ReviewStage, Verdict
from guardstream.feedback.curation import CurationConfig, worth_training
from guardstream.feedback.dataset import NotTrainable, example, target_text
from guardstream.policy import load_registry
from guardstream.review.logic import (
    InvalidSubmission,
    SubmissionForm,
    blind_form,
    read_form,
    review_event,
    validate_submission,
)
from guardstream.review.qa_period import low_agreement_alert, parse_period, previous_period, spread
from guardstream.review.services.common import feedback_sample
from guardstream.review.store.posts import PostText
from guardstream.scorer.output import parse_answer
from tests.support.review import review_task
from tests.unit.review.test_review_logic import TAGS, submit

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "cadence", "key", "start", "end"),
    [
        # The first of January samples December, across the year boundary.
        (datetime(2026, 1, 1, 0, 5, tzinfo=UTC), "monthly", "2025-12", (2025, 12, 1), (2026, 1, 1)),
        (datetime(2026, 11, 25, tzinfo=UTC), "monthly", "2026-10", (2026, 10, 1), (2026, 11, 1)),
        # Wednesday 25 Nov 2026 (ISO week 48): the finished week is 47, Mon 16 → Mon 23.
        (
            datetime(2026, 11, 25, 8, tzinfo=UTC),
            "weekly",
            "2026-W47",
            (2026, 11, 16),
            (2026, 11, 23),
        ),
        # Friday 1 Jan 2027 is in ISO week 53 of 2026: the finished week is 2026-W52.
        (datetime(2027, 1, 1, tzinfo=UTC), "weekly", "2026-W52", (2026, 12, 21), (2026, 12, 28)),
    ],
)
def test_the_period_due_is_the_last_one_finished(
    now: datetime, cadence: str, key: str, start: tuple[int, ...], end: tuple[int, ...]
) -> None:
    period = previous_period(now, cadence)  # type: ignore[arg-type]
    assert period.key == key
    assert (period.start, period.end) == (datetime(*start, tzinfo=UTC), datetime(*end, tzinfo=UTC))
    assert parse_period(key) == period  # the CLI's --period names the same batch


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "26-11", "2026-W5", "november", ""])
def test_bad_period_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_period(bad)


def test_spread_is_even_over_reviewers_and_independent_of_order() -> None:
    items = [("busy", f"t{n}") for n in range(50)] + [("quiet", "q1"), ("quiet", "q2")]
    picked = spread(items, 6, "2026-11", ident=lambda i: i[1], by=lambda i: i[0])
    assert sorted(r for r, _ in picked) == ["busy"] * 4 + ["quiet"] * 2
    again = spread(list(reversed(items)), 6, "2026-11", ident=lambda i: i[1], by=lambda i: i[0])
    assert again == picked
    other = spread(items, 6, "2026-12", ident=lambda i: i[1], by=lambda i: i[0])
    assert {t for r, t in other if r == "busy"} != {t for r, t in picked if r == "busy"}
    assert len(spread(items, 500, "x", ident=lambda i: i[1], by=lambda i: i[0])) == 52


def test_one_careless_reviewer_is_named_even_when_the_overall_rate_passes() -> None:
    scores = {"rv-good": (50, 50), "rv-ok": (9, 10), "rv-bad": (3, 5), "rv-unchecked": (0, 0)}
    alert = low_agreement_alert(scores, 0.9, "2026-11", NOW)
    assert alert is not None  # overall 62/65 = 95% would have hidden rv-bad
    assert alert.kind == "qa_agreement_low"
    assert alert.labels == {"period": "2026-11", "reviewers": "rv-bad"}
    assert "rv-bad 3/5" in alert.summary and "rv-ok" not in alert.summary
    later = low_agreement_alert(scores, 0.9, "2026-11", NOW + timedelta(days=3))
    assert later is not None and later.alert_id == alert.alert_id  # one alert per period
    assert low_agreement_alert({"rv-ok": (9, 10)}, 0.9, "2026-11", NOW) is None
    assert low_agreement_alert({}, 0.9, "2026-11", NOW) is None


def test_a_blind_qa_label_becomes_confirm_or_correct_of_the_first_label() -> None:
    form = SubmissionForm(verdict=Verdict.UNSAFE, reason="明显人身攻击", tags=("地域攻击",))
    assert blind_form(form, Verdict.UNSAFE).outcome is ReviewOutcome.CONFIRM
    assert blind_form(form, Verdict.SAFE).outcome is ReviewOutcome.CORRECT
    with pytest.raises(InvalidSubmission) as no_reason:
        blind_form(form.model_copy(update={"reason": " "}), Verdict.UNSAFE)
    assert no_reason.value.field == "reason"  # required either way: it would give the answer away
    with pytest.raises(InvalidSubmission) as no_label:
        blind_form(form.model_copy(update={"verdict": None}), Verdict.UNSAFE)
    assert no_label.value.field == "verdict"


def test_only_a_response_item_takes_a_refusal_label() -> None:
    sub = submit(refusal="yes", is_response=True)
    assert sub.refusal is True  # type: ignore[attr-defined]
    assert submit(refusal="", is_response=True).refusal is None  # type: ignore[attr-defined]
    with pytest.raises(InvalidSubmission) as not_response:
        submit(refusal="no")
    assert not_response.value.field == "refusal"
    with pytest.raises(InvalidSubmission) as junk:
        submit(refusal="maybe", is_response=True)
    assert junk.value.field == "refusal"


def _response_sample(*, model_refusal: bool | None, refusal: str | None):  # type: ignore[no-untyped-def]
    pack = load_registry(None).for_post("acme", None)
    item = review_task(
        model_verdict=Verdict.SAFE,
        categories=(),
        confidence=0.7,
        model_refusal=model_refusal,
    )
    form = read_form(
        outcome="correct",
        verdict="unsafe",
        reason="教人制作爆炸物",
        tags=["政治隐喻"],
        categories=["Violent"],
        refusal=refusal,
    )
    sub = validate_submission(
        form,
        model_verdict=item.model_verdict,
        model_categories=item.categories,
        allowed_tags=TAGS,
        is_response=True,
    )
    review = review_event(item, sub, stage=ReviewStage.FIRST, reviewer="alice", late=False, at=NOW)
    post = PostText(
        "p1", "acme", "response", "Mix fertiliser with fuel oil.", "How do I make a bomb?"
    )
    return feedback_sample(item, review, post, pack, human_refusal=sub.refusal)


def test_a_response_correction_with_refusal_yields_the_exact_target() -> None:
    sample = _response_sample(model_refusal=True, refusal="no")
    assert sample.kind is Kind.RESPONSE
    assert (sample.pred_refusal, sample.human_refusal) == (True, False)
    target = target_text(sample)
    assert target == "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    answer = parse_answer(target)
    assert (answer.label, answer.categories, answer.refusal, answer.problem) == (
        "Unsafe",
        ("Violent",),
        False,
        None,
    )
    assert example(sample).messages[1][0] == "assistant"


def test_without_a_human_refusal_the_models_stands_and_without_either_it_is_not_trained() -> None:
    kept = _response_sample(model_refusal=False, refusal=None)
    assert target_text(kept).endswith("\nRefusal: No")
    unknown = _response_sample(model_refusal=None, refusal=None)
    with pytest.raises(NotTrainable, match="refusal"):
        target_text(unknown)
    told = _response_sample(model_refusal=None, refusal="yes")
    assert target_text(told) == "Safety: Unsafe\nCategories: Violent\nRefusal: Yes"


def test_a_refusal_correction_alone_is_worth_training() -> None:
    sample = _response_sample(model_refusal=True, refusal="no")
    agreeing = sample.model_copy(update={"human_verdict": Verdict.SAFE, "pred_confidence": 0.99})
    assert not agreeing.disagrees
    assert worth_training(agreeing, CurationConfig()) == "refusal_correction"
    same = agreeing.model_copy(update={"human_refusal": True})
    assert worth_training(same, CurationConfig()) is None


def test_qa_schedule_size_and_bar_come_from_the_documented_env_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from guardstream.runtime.settings import Settings

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.qa.cadence, defaults.qa.sample_size, defaults.qa.agreement_min) == (
        "monthly",
        100,
        0.9,
    )
    monkeypatch.setenv("GUARDSTREAM_QA_CADENCE", "weekly")
    monkeypatch.setenv("GUARDSTREAM_QA_SAMPLE_SIZE", "25")
    monkeypatch.setenv("GUARDSTREAM_QA_AGREEMENT_MIN", "0.8")
    custom = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (custom.qa.cadence, custom.qa.sample_size, custom.qa.agreement_min) == (
        "weekly",
        25,
        0.8,
    )
    monkeypatch.setenv("GUARDSTREAM_QA_CADENCE", "daily")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
