"""The adversarial corpus file itself: versioned, well-formed, and covering every attack family."""

import pytest

from guardstream.contracts.events import Kind
from guardstream.devtools.adversarial import CORPUS_LATEST, invisible_chars, load_corpus

pytestmark = pytest.mark.unit

FAMILIES = {
    "control",
    "injection",
    "template",
    "delimiter",
    "invisible",
    "homoglyph",
    "padding",
    "multilingual",
}


def test_the_corpus_loads_and_covers_every_family() -> None:
    corpus = load_corpus()
    assert corpus.name == "adversarial-v3" and CORPUS_LATEST.name == "adversarial-v3.jsonl"
    families = {a.family for a in corpus.attacks}
    assert families == FAMILIES
    for family in FAMILIES:
        kinds = {a.kind for a in corpus.attacks if a.family == family}
        assert Kind.PROMPT in kinds, family
    assert {a.kind for a in corpus.attacks if a.family == "control"} == {Kind.PROMPT, Kind.RESPONSE}


def test_earlier_versions_are_kept_and_still_load() -> None:
    # A file is never edited once results were reported from it; v2 changed what v1's
    # cross-script homoglyph entries expect (folding) and added two; v3 adds the template's
    # plain-text delimiters (section markers, role and label lines).
    v1 = load_corpus(CORPUS_LATEST.with_name("adversarial-v1.jsonl"))
    v2 = load_corpus(CORPUS_LATEST.with_name("adversarial-v2.jsonl"))
    v3 = load_corpus()
    assert {a.id for a in v1.attacks} < {a.id for a in v2.attacks} < {a.id for a in v3.attacks}
    assert v1.sha256.startswith("5a4f93c3") and v2.sha256.startswith("90f21941")
    new = {a.family for a in v3.attacks if a.id not in {b.id for b in v2.attacks}}
    assert new == {"delimiter"}


def test_delimiter_entries_forge_each_marker_and_label_line() -> None:
    entries = [a for a in load_corpus().attacks if a.family == "delimiter"]
    texts = "\n".join(a.text + "\n" + (a.prompt or "") for a in entries)
    for forged in ("<END CONVERSATION>", "<BEGIN CONVERSATION>", "<BEGIN SAFETY POLICY>"):
        assert forged in texts, forged
    for label in ("USER:", "ASSISTANT:", "Safety:", "Categories:", "Refusal:", "# Task:"):
        assert f"\n{label}" in texts, label
    assert {a.kind for a in entries} == {Kind.PROMPT, Kind.RESPONSE}
    assert all("delimiters" in a.expect for a in entries)


def test_template_forgeries_cover_each_control_token_and_look_alikes() -> None:
    texts = " ".join(
        (a.text + (a.prompt or "")) for a in load_corpus().attacks if a.family == "template"
    )
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        assert token in texts, token
    assert "＜｜im_start｜＞" in texts and "‹|im_start|›" in texts and "<|im_\u200bstart|>" in texts


def test_padding_entries_exceed_a_4096_token_window_and_stay_under_the_post_limit() -> None:
    padded = [a for a in load_corpus().attacks if a.family == "padding"]
    assert len(padded) >= 3
    for attack in padded:
        assert attack.tail and attack.text.endswith(attack.tail)
        # At most ~4 characters per token in English, 1 per Chinese character.
        assert len(attack.text) > 4 * 4096 or attack.text.count("。") * 15 > 4096
        assert len(attack.text) < 65_536  # GUARDSTREAM_MAX_TEXT_CHARS: not a DLQ case


def test_invisible_entries_really_contain_invisible_characters() -> None:
    for attack in load_corpus().attacks:
        if attack.family == "invisible":
            assert invisible_chars(attack.text), attack.id
        elif attack.family in ("control", "injection", "multilingual"):
            assert not invisible_chars(attack.text + (attack.prompt or "")), attack.id
