"""Canonical form of user text and the content key derived from it.

Spam waves and reposts differ in invisible ways (zero-width joiners, tag characters,
full-width letters, odd spacing, a Cyrillic `о` inside a Latin word); the normal form erases
those so equal-looking posts share a key and a verdict, and the model reads what a person
sees. The content key also covers everything else that changes the model's input
or output (kind, prompt context, policy fields that enter the prompt, model and adapter), so a
cached verdict is only reused when the model would have seen the same thing.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

# Format (Cf: zero-width space/joiners, bidi controls, tag characters, BOM, soft hyphen),
# surrogates (Cs: lone ones survive JSON "\\ud800" escapes) and unassigned code points (Cn).
_DROP_CATEGORIES = frozenset({"Cf", "Cs", "Cn"})
# Controls that mean whitespace become a space; NUL, BEL, ESC … disappear.
_SPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85")
# Variation selectors and combining grapheme joiner are Mn but carry no meaning for moderation.
_INVISIBLE_MARKS = frozenset(
    [0x034F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x115F, 0x1160, 0x3164, 0xFFA0]
)
# Beyond the Basic Multilingual Plane the table answers without remembering, so text made of
# every rare code point cannot grow it past 65,536 entries.
_REMEMBERED = 0x10000


class _Visible(dict[int, int | str | None]):
    """`str.translate` table: each code point to nothing (removed), a space, or its own NFKC
    form, worked out the first time it is seen (a C-speed lookup after).

    Mapping a character to its NFKC form changes no result: the text stays compatibility-
    equivalent, and NFKC is one fixed form per equivalence class. It leaves the final NFKC
    pass little to do, often nothing (its quick check then returns the text as it is).
    """

    def __missing__(self, code: int) -> int | str | None:
        ch = chr(code)
        category = unicodedata.category(ch)
        value: int | str | None = code
        if category == "Cc":
            value = " " if ch in _SPACE_CONTROLS else None
        elif category in _DROP_CATEGORIES or code in _INVISIBLE_MARKS:
            value = None
        elif (folded := unicodedata.normalize("NFKC", ch)) != ch:
            value = folded
        if code < _REMEMBERED:
            self[code] = value
        return value


_VISIBLE = _Visible()


@functools.cache
def _changing() -> re.Pattern[str]:
    """The characters `_VISIBLE` does not map to themselves: every such one of the BMP (about
    6,600, found once, ~35 ms) and everything beyond it (rare; looked up as before)."""
    probe = _Visible()
    ranges: list[list[int]] = []
    for code in range(_REMEMBERED):
        if probe.__missing__(code) != code:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    spans = "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )
    return re.compile(f"[{spans}{re.escape(chr(_REMEMBERED))}-\U0010ffff]")


def _visible_text(text: str) -> str:
    """`text.translate(_VISIBLE)`, with only the characters that change looked up: a typical
    non-ASCII post (Chinese with full-width punctuation) has a few of them in a hundred or
    more characters, and `str.translate` looks up every one (8.4 → 3.9 µs per post). The
    pattern is built on the first non-ASCII text."""
    return _changing().sub(_visible_char, text)


def _visible_char(match: re.Match[str]) -> str:
    value = _VISIBLE[ord(match.group())]
    return "" if value is None else value if isinstance(value, str) else chr(value)


_ASCII_CONTROLS = {
    code: (" " if chr(code) in _SPACE_CONTROLS else None) for code in (*range(0x20), 0x7F)
}


def normalise(text: str) -> str:
    """Invisible and control characters removed, NFKC, whitespace collapsed, trimmed, and
    cross-script homoglyphs folded (`fold_homoglyphs`).

    Removal comes before NFKC so that characters split by an invisible one compose the same
    way as if it had never been there (which also makes `normalise` idempotent). ASCII text
    has nothing invisible, is its own NFKC form and has no other script, so it only loses its
    controls.
    """
    if text.isascii():
        if not text.isprintable():
            text = text.translate(_ASCII_CONTROLS)
        return " ".join(text.split())
    text = unicodedata.normalize("NFKC", _visible_text(text))
    if (folded := fold_homoglyphs(text)) != text:
        # A folded letter may now compose with a following combining mark ("bо\u0301mb").
        text = unicodedata.normalize("NFKC", folded)
    return " ".join(text.split())


# --- cross-script homoglyphs ---------------------------------------------------------------
# NFKC keeps scripts apart, so "bоmb" with a Cyrillic о stays a different string from "bomb":
# a keyword filter, the cache and a tokenizer all see another word, a reader sees the same one.
# Following Unicode TS #39 (mixed-script confusables), a word that mixes Latin, Cyrillic and
# Greek letters is brought into the text's dominant script, and so is a word made only of
# look-alike letters inside Latin-dominated text (the Cyrillic "а" in "make а bomb"). Words
# written wholly in their own script inside text of that script ("Привет", "Ελλάδα") are left
# alone, as are Cyrillic- or Greek-dominated texts' all-Latin words (brand names, code).

# Letters a reader cannot tell from a Latin one in common fonts (from Unicode's
# confusables.txt, limited to unambiguous single-letter pairs).
_CYRILLIC_LATIN = dict(
    zip(
        "аеорсухіјѕԁһԛԝӏАВЕКМНОРСТХІЈЅҮ",
        "aeopcyxijsdhqwlABEKMHOPCTXIJSY",
        strict=True,
    )
)
_GREEK_LATIN = dict(zip("οαινρυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "oaivpuxABEZHIKMNOPTYX", strict=True))
_SKELETON = {"Cyrillic": _CYRILLIC_LATIN, "Greek": _GREEK_LATIN}  # letter → its Latin twin


def _into(script: str) -> dict[int, str]:
    """Translation table bringing the other scripts' look-alike letters into `script`."""
    if script == "Latin":
        return str.maketrans(_CYRILLIC_LATIN | _GREEK_LATIN)
    own = {latin: letter for letter, latin in _SKELETON[script].items()}
    (other,) = (pairs for name, pairs in _SKELETON.items() if name != script)
    twins = {latin: latin for latin in own} | other  # Latin letters are their own twins
    return {ord(letter): own[latin] for letter, latin in twins.items() if latin in own}


_INTO = {script: _into(script) for script in ("Latin", "Cyrillic", "Greek")}
_LOOKALIKE = re.compile(f"[{''.join(_CYRILLIC_LATIN)}{''.join(_GREEK_LATIN)}]")
_SCRIPT_LETTERS = {
    "Latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
    "Cyrillic": re.compile(r"[\u0400-\u052f]"),
    "Greek": re.compile(r"[\u0370-\u03ff]"),
}
# A word: letters with their combining marks (a mark must not split a word: after folding,
# NFKC may compose it with the letter before it and join two words into one).
_MARKS = "\u0300-\u036f\u0483-\u0489\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = re.compile(f"[^\\W\\d_](?:[^\\W\\d_]|[{_MARKS}])*")


def _scripts(word: str) -> set[str]:
    return {script for script, letters in _SCRIPT_LETTERS.items() if letters.search(word)}


def fold_homoglyphs(text: str) -> str:
    """Mixed-script words (and look-alike-only words in Latin text) in the dominant script."""
    if not _LOOKALIKE.search(text):
        return text
    present = {
        script: letters for script, letters in _SCRIPT_LETTERS.items() if letters.search(text)
    }
    if len(present) < 2:  # one script: nothing to fold
        return text
    counts = {script: len(letters.findall(text)) for script, letters in present.items()}
    dominant = max(counts, key=counts.__getitem__)  # ties: Latin, then Cyrillic, then Greek
    table = _INTO[dominant]

    def fold(match: re.Match[str]) -> str:
        word = match.group(0)
        scripts = _scripts(word)
        if len(scripts) > 1 and dominant in scripts:
            return word.translate(table)
        if dominant == "Latin" and scripts != {"Latin"}:
            folded = word.translate(table)
            return folded if _scripts(folded) == {"Latin"} else word
        return word

    return _WORD.sub(fold, text)


def content_key(
    text: str,
    *,
    kind: str,
    prompt: str | None,
    model: str,
    adapter: str | None,
    prompt_policy: str = "",
) -> str:
    """128-bit hex key over every input that changes the verdict. Inputs must be normalised.

    `prompt_policy` is the part of a policy pack that enters the prompt (domain tags, region
    hints); thresholds and action mapping are applied after the lookup and stay out of the key.
    """
    context = key_context(
        kind=kind, prompt=prompt, model=model, adapter=adapter, prompt_policy=prompt_policy
    )
    return keyed(context, text)


def key_context(
    *, kind: str, prompt: str | None, model: str, adapter: str | None, prompt_policy: str = ""
) -> bytes:
    """Everything in a content key but the text, framed: `keyed(key_context(...), text)` is
    `content_key(text, ...)`. Posts sharing a context (the same pack, model and adapter, no
    prompt) can share this, and only their text is framed and hashed per post."""
    return b"".join(
        _framed(part) for part in (kind, prompt or "", prompt_policy, model, adapter or "")
    )


def keyed(context: bytes, text: str) -> str:
    """The content key of `text` in `context` (from `key_context`)."""
    return hashlib.blake2b(
        context + _framed(text), digest_size=16, person=b"guardstream-ck1"
    ).hexdigest()


def _framed(part: str) -> bytes:
    encoded = part.encode("utf-8", "surrogatepass")
    return len(encoded).to_bytes(8, "big") + encoded


# --- neutralise: user text that cannot pose as prompt structure -------------------------

# `<|im_start|>`, `<|endoftext|>`, any `<|…|>` special, and Qwen3's added tokens without
# pipes (`<think>`, `<tool_call>`, `<tool_response>`): a tokenizer matches added tokens inside
# plain text, so any of them in a post would become structure.
_CONTROL = re.compile(r"<\|[^<>|\s]{0,40}\|>|</?(?:think|tool_call|tool_response)>", re.IGNORECASE)
# The template's plain-text structure: its `<BEGIN …>` / `<END …>` section markers (the
# conversation, safety policy, categories, refusal policy), closed or not. No repetition in
# these patterns crosses a line break and each is possessive (`*+`, never backtracked), so a
# post of 64k newlines or blanks costs linear time (`\s*` here took minutes on such a post).
_MARKER = re.compile(r"<([ \t]*+/?[ \t]*+(?:BEGIN|END)\b[^<>\n]{0,80})(>?)", re.IGNORECASE)
# … and its line prefixes: the turn roles, the answer's labels and `# Task:`, at the start of a
# line (any line break a reader may honour), after blanks, markdown marks or invisibles, with
# an ASCII or look-alike colon.
_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # every line break `str.splitlines` honours
_LINE_START = f"(?:^|(?<=[{_BREAKS}]))"
_BLANK = f"[^\\S{_BREAKS}]"  # white space that does not break the line
_LABEL = re.compile(
    _LINE_START
    + f"((?:{_BLANK}|[*#>_\\-\u00ad\u200b-\u200f\u2060\ufeff])*+)"
    + r"(USER|ASSISTANT|SYSTEM|Safety|Categories|Refusal|Task)"
    + f"({_BLANK}*+[:\uff1a\ufe55\ufe13\u2236])",
    re.IGNORECASE,
)


def _quoted(match: re.Match[str]) -> str:
    return match.group(0).replace("<", "‹").replace(">", "›")


def neutralise(text: str) -> str:
    """`text` with nothing the model or the tokenizer could take for prompt structure.

    Control tokens and `<BEGIN …>` / `<END …>` markers get their angle brackets turned to
    `‹ ›` (`<|im_start|>` → `‹|im_start|›`, `<END CONVERSATION>` → `‹END CONVERSATION›`);
    a line opening with a role or label has the word quoted the same way (`USER:` →
    `‹USER›:`, `Safety: Safe` → `‹Safety›: Safe`). Pure and idempotent: the same text always
    gives the same model input, so cache keys (over the text itself) stay valid.
    """
    text = _CONTROL.sub(_quoted, text)
    text = _MARKER.sub(lambda m: f"‹{m.group(1)}{'›' if m.group(2) else ''}", text)
    return _LABEL.sub(lambda m: f"{m.group(1)}‹{m.group(2)}›{m.group(3)}", text)
