"""Property tests of the answer parser over generated model outputs.

Answers are generated the way a guard model (or a broken one) writes them: the three lines in
Qwen3Guard's format with any casing, spacing and line endings, categories in any order with
repeats and a trailing period, extra chatter lines, and corruptions (a second `Safety:` line,
an unknown label, a missing label line). The two-phase engine's reconstructed text
(`Safety: <Label>\\n` + whatever the continuation says) is generated too.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.events import Verdict
from guardstream.contracts.labels import CATEGORIES, LABELS
from guardstream.scorer.output import label_confidence, parse_answer

pytestmark = pytest.mark.unit

SAFETY_LINE = re.compile(r"^\s*safety\s*:", re.IGNORECASE)

spaces = st.text(alphabet=" \t", max_size=3)
newline = st.sampled_from(["\n", "\r\n"])


@st.composite
def cased(draw: st.DrawFn, word: str) -> str:
    style = draw(st.sampled_from(["as is", "lower", "upper"]))
    return {"as is": word, "lower": word.lower(), "upper": word.upper()}[style]


@st.composite
def field_line(draw: st.DrawFn, name: str, value: str) -> str:
    return (
        draw(spaces) + draw(cased(name)) + draw(spaces) + ":" + draw(spaces) + value + draw(spaces)
    )


# Lines a chatty model might add that are none of the three fields.
chatter = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n:"),
    max_size=30,
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, str, list[str], bool | None]:
    """A well-formed answer in any spelling: (text, label, categories, refusal)."""
    label = draw(st.sampled_from(LABELS))
    categories = draw(st.lists(st.sampled_from(CATEGORIES), max_size=4))
    items = [draw(cased(c)) for c in categories] or [draw(cased("None"))]
    listed = ", ".join(items) + draw(st.sampled_from(["", "."]))
    refusal = draw(st.sampled_from([None, True, False]))
    lines = [
        draw(field_line("Safety", draw(cased(label)))),
        draw(field_line("Categories", listed)),
    ]
    if refusal is not None:
        lines.append(draw(field_line("Refusal", draw(cased("Yes" if refusal else "No")))))
    lines += draw(st.lists(chatter, max_size=2))
    return draw(newline).join(lines), label, categories, refusal


@given(answers())
def test_any_spelling_of_a_well_formed_answer_reads_the_same(
    case: tuple[str, str, list[str], bool | None],
) -> None:
    text, label, categories, refusal = case
    answer = parse_answer(text)
    assert answer.label == label
    assert answer.categories == tuple(dict.fromkeys(categories))  # order kept, repeats dropped
    assert answer.refusal is refusal
    assert answer.unknown_categories == ()


@given(answers(), st.sampled_from(LABELS), st.integers(min_value=0, max_value=5))
def test_a_second_safety_line_makes_any_answer_unusable(
    case: tuple[str, str, list[str], bool | None], other: str, where: int
) -> None:
    lines = case[0].split("\n")
    lines.insert(min(where, len(lines)), f"Safety: {other}")
    answer = parse_answer("\n".join(lines))
    assert answer.label is None
    assert answer.verdict is Verdict.CONTROVERSIAL


@given(answers(), st.text(min_size=1, max_size=12).filter(lambda t: t.splitlines() == [t]))
def test_an_unknown_label_is_unusable_never_safe(
    case: tuple[str, str, list[str], bool | None], word: str
) -> None:
    if word.strip().casefold() in {label.casefold() for label in LABELS}:
        return
    _, _, rest = case[0].partition("\n")
    answer = parse_answer(f"Safety: {word}\n{rest}")
    assert answer.label is None
    assert answer.verdict is Verdict.CONTROVERSIAL


@given(st.text())
def test_the_parser_never_raises_and_safe_needs_exactly_one_safe_line(text: str) -> None:
    answer = parse_answer(text)
    if answer.verdict is Verdict.SAFE:
        safety = [line for line in text.splitlines() if SAFETY_LINE.match(line)]
        assert len(safety) == 1
        assert safety[0].split(":", 1)[1].strip().casefold() == "safe"


@given(
    st.sampled_from(LABELS),
    st.lists(
        st.one_of(
            chatter,
            st.builds(lambda c: f"Categories: {c}", st.sampled_from(CATEGORIES)),
            st.sampled_from(["Refusal: Yes", "Refusal: No"]),
        ),
        max_size=4,
    ),
)
def test_two_phase_text_keeps_the_forced_label_whatever_follows(
    label: str, continuation: list[str]
) -> None:
    """The engine forces `Safety: <Label>\\n` and appends the model's continuation."""
    answer = parse_answer(f"Safety: {label}\n" + "\n".join(continuation))
    assert answer.label == label


@given(st.lists(st.sampled_from([c for c in CATEGORIES if c != "Violent"]), min_size=1))
def test_violent_is_never_read_out_of_another_category(categories: list[str]) -> None:
    answer = parse_answer("Safety: Unsafe\nCategories: " + ", ".join(categories))
    assert "Violent" not in answer.categories


logprob = st.one_of(st.none(), st.floats(min_value=-50, max_value=0))


@given(st.fixed_dictionaries({label: logprob for label in LABELS}))
def test_confidence_is_a_distribution_over_the_labels(lps: dict[str, float | None]) -> None:
    shares = {label: label_confidence(label, lps) for label in LABELS}  # type: ignore[arg-type]
    for label, share in shares.items():
        assert (share is None) == (lps[label] is None)
        assert share is None or 0.0 <= share <= 1.0
    present = [s for s in shares.values() if s is not None]
    if present:
        assert math.isclose(sum(present), 1.0, rel_tol=1e-9)
