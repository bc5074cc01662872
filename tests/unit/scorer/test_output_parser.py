import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.events import Verdict
from guardstream.contracts.labels import CATEGORIES
from guardstream.scorer.output import label_confidence, parse_answer

pytestmark = pytest.mark.unit


def test_unsafe_with_categories() -> None:
    answer = parse_answer("Safety: Unsafe\nCategories: Violent, PII")
    assert answer.verdict is Verdict.UNSAFE
    assert answer.categories == ("Violent", "PII")
    assert answer.refusal is None


def test_non_violent_is_not_violent() -> None:
    answer = parse_answer("Safety: Unsafe\nCategories: Non-violent Illegal Acts")
    assert answer.categories == ("Non-violent Illegal Acts",)
    assert "Violent" not in answer.categories


def test_safe_with_none_and_refusal() -> None:
    answer = parse_answer("Safety: Safe\nCategories: None\nRefusal: Yes")
    assert answer.verdict is Verdict.SAFE
    assert answer.categories == ()
    assert answer.refusal is True


def test_spacing_and_case_are_tolerated() -> None:
    answer = parse_answer("  safety :  controversial \r\ncategories:politically sensitive topics")
    assert answer.verdict is Verdict.CONTROVERSIAL
    assert answer.categories == ("Politically Sensitive Topics",)


def test_unknown_categories_are_kept_as_other_never_dropped() -> None:
    answer = parse_answer("Safety: Unsafe\nCategories: Violent, Spam, PII.")
    assert answer.categories == ("Violent", "other:Spam", "PII")
    assert answer.unknown_categories == ("other:Spam",)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I cannot decide.",
        "Safety:",
        "Safety: Maybe",
        "Safety: Safe\nSafety: Unsafe",  # duplicated line
        "Safety: Safe\nSafety: Safe",
        "Categories: None",  # missing Safety line
        "The verdict is Safety: Safe",  # not a line of its own
        "Safety: Safely",
    ],
)
def test_unusable_output_goes_to_humans(text: str) -> None:
    answer = parse_answer(text)
    assert answer.label is None
    assert answer.verdict is Verdict.CONTROVERSIAL
    assert answer.problem


@given(st.text().filter(lambda t: "safety" not in t.casefold()))
def test_output_without_a_safety_line_is_never_safe(text: str) -> None:
    assert parse_answer(text).verdict is Verdict.CONTROVERSIAL


@given(st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=len(CATEGORIES)))
def test_categories_round_trip(categories: list[str]) -> None:
    line = ", ".join(categories) if categories else "None"
    assert parse_answer(f"Safety: Unsafe\nCategories: {line}").categories == tuple(categories)


def test_confidence_is_the_label_share_of_the_three_label_tokens() -> None:
    lp = {"Safe": math.log(0.6), "Unsafe": math.log(0.3), "Controversial": math.log(0.1)}
    assert label_confidence("Safe", lp) == pytest.approx(0.6)
    # Renormalised over the labels only: other tokens' mass does not dilute it.
    lp2 = {"Safe": math.log(0.3), "Unsafe": math.log(0.15), "Controversial": math.log(0.05)}
    assert label_confidence("Safe", lp2) == pytest.approx(0.6)
    assert label_confidence("Unsafe", {"Safe": None, "Unsafe": -0.1, "Controversial": None}) == 1.0
    assert label_confidence("Safe", {}) is None
