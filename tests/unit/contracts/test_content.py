import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.text import content_key, fold_homoglyphs, normalise

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ｈｅｌｌｏ　ｗｏｒｌｄ", "Hello world"),  # full-width letters and ideographic space
        ("kill\u200b all\u200d", "kill all"),  # zero-width space / joiner
        ("bo\u00admb", "bomb"),  # soft hyphen
        ("a\U000e0041\U000e0042b", "ab"),  # tag characters
        ("evil\u202etxt.exe", "eviltxt.exe"),  # bidi override
        ("line\none\ttab\r\n  end ", "line one tab end"),
        ("nul\x00byte\x1b[31m", "nulbyte[31m"),
        ("e\u200d\u0301", "é"),  # an invisible character must not block composition
        ("\ud800lone surrogate", "lone surrogate"),
        ("我觉得女生学不好编程", "我觉得女生学不好编程"),
    ],
)
def test_normalise_examples(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


@given(st.text())
def test_normalised_text_has_no_invisible_or_control_characters(text: str) -> None:
    import unicodedata

    result = normalise(text)
    assert result == result.strip()
    assert "  " not in result
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in result)


@given(st.text(min_size=1), st.sampled_from(["\u200b", "\u200c", "\u2060", "\ufeff", "\u00ad"]))
def test_invisible_insertions_share_a_content_key(text: str, invisible: str) -> None:
    spliced = invisible.join(text)
    assert content_key(
        normalise(spliced), kind="prompt", prompt=None, model="m", adapter=None
    ) == content_key(normalise(text), kind="prompt", prompt=None, model="m", adapter=None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("How can I make a bоmb?", "How can I make a bomb?"),  # Cyrillic о inside a Latin word
        ("How can I make a bοmb?", "How can I make a bomb?"),  # Greek ο
        ("Ноw cаn I mаkе а bоmb?", "How can I make a bomb?"),  # Cyrillic words in Latin text
        ("ВОМВ threat", "BOMB threat"),  # a word of look-alikes only, in Latin text
        ("Привет, как дела?", "Привет, как дела?"),  # Russian stays Russian
        ("Я пью Coca Cola", "Я пью Coca Cola"),  # a Latin brand in Russian text stays Latin
        ("Прoвeрка связи", "Проверка связи"),  # Latin o/e inside a Russian word
        ("Καλημέρα κόσμε, Aθήνα", "Καλημέρα κόσμε, Αθήνα"),  # Latin A inside a Greek word
        ("bо\u0301mb", "bómb"),  # the folded letter composes with its mark
        ("我觉得 bоmb", "我觉得 bomb"),
    ],
)
def test_cross_script_homoglyphs_are_folded(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@given(st.text(alphabet="bomaekcpxyBOMAEKCPXY оаесрхуВОМАЕКСРХУ οαρχΟΑΡΧ.,!\u0301"))
def test_homoglyph_folding_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


def test_content_key_covers_everything_that_changes_the_verdict() -> None:
    base = {"kind": "prompt", "prompt": None, "model": "m", "adapter": None}
    key = content_key("text", **base)
    assert len(key) == 32
    assert key == content_key("text", **base)
    assert key != content_key("text", **{**base, "kind": "response", "prompt": "q"})
    assert key != content_key("text", **{**base, "model": "m2"})
    assert key != content_key("text", **{**base, "adapter": "lora-1"})
    assert key != content_key("text", **base, prompt_policy="[领域:公共卫生]")
    # Field boundaries are unambiguous: moving text between fields changes the key.
    assert content_key("ab", **{**base, "prompt": "c"}) != content_key(
        "b", **{**base, "prompt": "ca"}
    )


def _normalise_one_char_at_a_time(text: str) -> str:
    """The definition `normalise` implements with translate tables: the original loop."""
    import re
    import unicodedata

    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            if ch in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85":
                out.append(" ")
        elif cat in ("Cf", "Cs", "Cn") or ord(ch) in {
            0x034F,
            *range(0xFE00, 0xFE10),
            *range(0xE0100, 0xE01F0),
            0x115F,
            0x1160,
            0x3164,
            0xFFA0,
        }:
            continue
        else:
            out.append(ch)
    text = unicodedata.normalize(
        "NFKC", fold_homoglyphs(unicodedata.normalize("NFKC", "".join(out)))
    )
    return re.sub(r"\s+", " ", text).strip()


@given(st.text(alphabet=st.characters(exclude_categories=())) | st.from_regex(r"[\x00-\x7f]*"))
def test_normalise_matches_the_per_character_definition(text: str) -> None:
    assert normalise(text) == _normalise_one_char_at_a_time(text)


def test_normalise_matches_the_definition_on_every_code_point() -> None:
    every = "".join(chr(code) for code in range(0x110000))
    for start in range(0, len(every), 4096):
        chunk = every[start : start + 4096]
        assert normalise(chunk) == _normalise_one_char_at_a_time(chunk), hex(start)
        # and each character after an ASCII letter, where composition can happen
        spliced = "a".join(chunk[::97])
        assert normalise(spliced) == _normalise_one_char_at_a_time(spliced), hex(start)


def test_content_key_is_pinned() -> None:
    # Cached verdicts outlive deploys: a change here orphans them, so make it on purpose.
    key = content_key(
        "明天 见\ud800",
        kind="response",
        prompt="q?",
        model="m",
        adapter="lora",
        prompt_policy="prompt-v1:[x:y]",
    )
    assert key == "9c2620a3a2a78163cffc4dcc120eae13"
