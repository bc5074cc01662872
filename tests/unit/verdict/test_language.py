"""Language detection in triage: every post leaves it with a language (given, detected or
`und`), whatever its text holds, and the detector is right on short posts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import CallbackOptions

from guardstream.contracts.events import Decision, LangSource, ScoreRequest, Source, Verdict
from guardstream.policy import load_registry
from guardstream.runtime import metrics
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide
from guardstream.verdict.intake import Triaged, score_request, score_request_json, triage_record
from guardstream.verdict.language import (
    DETECT_CHARS,
    OTHER,
    UNDETERMINED,
    FastTextDetector,
    default_detector,
    language_label,
)

pytestmark = pytest.mark.unit

DETECTOR = default_detector()
POLICIES = load_registry(None)
SAMPLES = Path(__file__).parents[3] / "bench" / "data" / "lang_samples.tsv"
ISSUE_LANGS = ("zh", "en", "es", "ar", "ru", "hi", "ja", "ko", "fr", "de", "pt", "id", "vi", "th")
ISSUE_LANGS += ("tr",)

# Any code point at all: lone surrogates, NUL, C0/C1 controls, unassigned, private use.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
# The characters every field must survive, mixed into words (in any text, Hypothesis rarely
# draws a lone surrogate next to a letter, which is what reaches the model).
SPECIALS = st.sampled_from(
    ["\x00", "\ud800", "\udfff", "\n", "\r", "\x1b", "\x85", "\u2028", "\ufeff"]
)
MIXED = st.lists(st.one_of(SPECIALS, st.text(ANY_CHAR, max_size=12)), max_size=40).map("".join)
HOSTILE = st.one_of(
    MIXED,
    st.text(ANY_CHAR, max_size=400),
    # Megabytes: a hostile piece repeated (the detector must read only the head).
    st.builds(lambda piece, times: piece * times, MIXED.filter(bool), st.integers(1, 300_000)),
)
# No letter anywhere: emoji, symbols, digits, punctuation, spaces, marks, controls.
LETTERLESS = st.text(
    st.characters(categories=("So", "Sm", "Sc", "Sk", "Nd", "No", "P", "Zs", "Cc", "Mn")),
    max_size=200,
)


def _samples() -> list[tuple[str, str]]:
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t", 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE)
def test_hostile_text_gives_a_known_code_or_und(text: str) -> None:
    found = DETECTOR.detect(text)
    assert found == UNDETERMINED or found in DETECTOR.languages


@settings(max_examples=300, deadline=None)
@given(LETTERLESS)
def test_text_without_letters_is_undetermined(text: str) -> None:
    assert DETECTOR.detect(text) == UNDETERMINED


@pytest.mark.parametrize("text", ["😂😂😂🔥", "12345 678", "!!! ??? ...", "🙏 2024 ✌️ 👍👍"])
def test_emoji_digits_and_punctuation_are_und(text: str) -> None:
    assert DETECTOR.detect(text) == UNDETERMINED


@pytest.mark.parametrize("text", ["hmm", "lol haha", "asdf"])
def test_what_the_model_cannot_place_is_und(text: str) -> None:
    # fastText answers its prior (English, 0.12) for words it has no feature of: no guess.
    assert DETECTOR.detect(text) == UNDETERMINED


def test_remembered_answers_are_the_models_and_stay_bounded() -> None:
    detector = FastTextDetector()
    texts = [text for _, text in _samples()]
    first = [detector.detect(text) for text in texts]
    assert [detector.detect(text) for text in texts] == first  # from memory
    detector.forget()
    assert [detector.detect(text) for text in texts] == first
    for n in range(5000):
        detector.detect(f"post number {n} says hello to everyone")
    assert len(detector._recent) <= 4096


def test_the_detector_knows_the_issues_languages_and_many_more() -> None:
    assert set(ISSUE_LANGS) <= DETECTOR.languages
    assert len(DETECTOR.languages) >= 119  # Qwen3Guard's 119 languages: no fewer here


def test_short_posts_are_detected_in_every_sample_language() -> None:
    rows = _samples()
    wrong = Counter(code for code, text in rows if DETECTOR.detect(text) != code)
    assert sum(wrong.values()) <= len(rows) // 50, wrong  # 98% of 140 short posts
    for code in ISSUE_LANGS:
        assert wrong[code] <= 1, (code, wrong)


def test_only_the_head_of_a_long_text_is_read() -> None:
    chinese = [text for code, text in _samples() if code == "zh"]
    head = "".join(chinese * 10)[:DETECT_CHARS]
    assert DETECTOR.detect(head + " This tail is English and very long." * 10_000) == "zh"


@given(st.text(ANY_CHAR, max_size=60))
def test_metric_labels_stay_in_a_bounded_set(lang: str) -> None:
    label = language_label(lang, DETECTOR)
    assert label in DETECTOR.languages | {UNDETERMINED, OTHER}


def test_the_language_metric_sums_every_triage_process_count() -> None:
    first: dict[tuple[str, str], int] = {("zh", "detected"): 2, ("en", "given"): 1}
    second: dict[tuple[str, str], int] = {("zh", "detected"): 3}
    metrics.observe_languages(first)
    metrics.observe_languages(second)
    seen = {
        (o.attributes["lang"], o.attributes["source"]): o.value
        for o in metrics._observe_languages(CallbackOptions())  # what the SDK collects
        if o.attributes is not None
    }
    assert seen[("zh", "detected")] >= 5 and seen[("en", "given")] >= 1


def test_metric_labels_use_the_primary_subtag() -> None:
    assert language_label("zh-Hant-TW", DETECTOR) == "zh"
    assert language_label("PT_br", DETECTOR) == "pt"
    assert language_label("tlh", DETECTOR) == OTHER


def post(**fields: object) -> bytes:
    doc = {
        "schema_version": "1.0",
        "event_id": "e1",
        "produced_at": "2026-11-22T10:00:00Z",
        "post_id": "p1",
        "tenant": "acme",
        "author_id": "a1",
        "text": "这家餐厅的服务太差了，再也不来了！",
        "created_at": "2026-11-22T10:00:00Z",
        **fields,
    }
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def triaged(raw: bytes) -> Triaged:
    return triage_record(raw, max_text_chars=1000, model="m", adapter=None, policies=POLICIES)


# What the contract accepts as `lang`: one line of printable text, at most 35 characters.
LANGS = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
    min_size=1,
    max_size=35,
).filter(lambda lang: not lang.isspace())


@settings(deadline=None)
@given(LANGS)
def test_a_given_lang_is_kept_as_given(lang: str) -> None:
    item = triaged(post(lang=lang, text="Hello world, how are you today?"))
    assert (item.lang, item.lang_source) == (lang, LangSource.GIVEN)


@pytest.mark.parametrize("lang", ["", "   "])
def test_a_blank_lang_is_detected(lang: str) -> None:
    item = triaged(post(lang=lang, text="¿Alguien sabe a qué hora abre la farmacia mañana?"))
    assert (item.lang, item.lang_source) == ("es", LangSource.DETECTED)


@pytest.mark.parametrize(
    ("fields", "lang", "source"),
    [
        ({}, "zh", LangSource.DETECTED),
        ({"lang": ""}, "zh", LangSource.DETECTED),
        ({"lang": "zh-Hans"}, "zh-Hans", LangSource.GIVEN),
        ({"lang": "en"}, "en", LangSource.GIVEN),  # given wins, even when the text disagrees
        ({"text": "😂😂 2024"}, "und", LangSource.DETECTED),
        (
            {"text": "\u200b Ｈｅｌｌｏ\u200b everyone, nice to meet you all"},
            "en",
            LangSource.DETECTED,
        ),
    ],
)
def test_triage_gives_every_post_a_language(
    fields: dict[str, object], lang: str, source: LangSource
) -> None:
    item = triaged(post(**fields))
    assert (item.lang, item.lang_source) == (lang, source)
    request = ScoreRequest.from_json(score_request_json(item, near_duplicates=False))
    assert (request.lang, request.lang_source) == (lang, source)
    built = score_request(item, near_duplicates=False)
    assert (built.lang, built.lang_source) == (lang, source)


def test_a_cache_decision_carries_the_language_and_its_source() -> None:
    item = triaged(post())
    verdict = CachedVerdict(
        verdict=Verdict.SAFE,
        categories=(),
        confidence=0.9,
        refusal=None,
        reason="Qwen3Guard: Safe",
        source=Source.MODEL,
        model="m",
        adapter=None,
        decided_at=item.post.created_at,
    )
    decision = decide(
        verdict,
        Origin.CACHE,
        item.pack,
        post_id="p1",
        post_event_id="e1",
        tenant="acme",
        content_key=item.content_key,
        lang=item.lang,
        lang_source=item.lang_source,
    )
    wire = orjson.loads(decision.to_json())
    assert (wire["lang"], wire["lang_source"]) == ("zh", "detected")
    # An older reader's view: the same decision without the new fields is still a decision.
    older = Decision.from_json(orjson.dumps({k: v for k, v in wire.items() if "lang" not in k}))
    assert older.lang is None and older.decision_id == decision.decision_id
