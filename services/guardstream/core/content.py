"""Canonical form of user text and the content key derived from it.

Spam waves and reposts differ in invisible ways (zero-width joiners, tag characters,
full-width letters, odd spacing); the normal form erases those so equal-looking posts share a
key and a verdict. The content key also covers everything else that changes the model's input
or output (kind, prompt context, policy fields that enter the prompt, model and adapter), so a
cached verdict is only reused when the model would have seen the same thing.
"""

from __future__ import annotations

import hashlib
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
_ASCII_CONTROLS = {
    code: (" " if chr(code) in _SPACE_CONTROLS else None) for code in (*range(0x20), 0x7F)
}


def normalise(text: str) -> str:
    """Invisible and control characters removed, NFKC, whitespace collapsed, trimmed.

    Removal comes before NFKC so that characters split by an invisible one compose the same
    way as if it had never been there (which also makes `normalise` idempotent). ASCII text
    has nothing invisible and is its own NFKC form, so it only loses its controls.
    """
    if text.isascii():
        if not text.isprintable():
            text = text.translate(_ASCII_CONTROLS)
        return " ".join(text.split())
    return " ".join(unicodedata.normalize("NFKC", text.translate(_VISIBLE)).split())


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
    encoded = [
        part.encode("utf-8", "surrogatepass")
        for part in (kind, prompt or "", prompt_policy, model, adapter or "", text)
    ]
    framed = b"".join(len(part).to_bytes(8, "big") + part for part in encoded)
    return hashlib.blake2b(framed, digest_size=16, person=b"guardstream-ck1").hexdigest()
