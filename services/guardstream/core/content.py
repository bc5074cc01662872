"""Canonical form of user text and the content key derived from it.

Spam waves and reposts differ in invisible ways (zero-width joiners, tag characters,
full-width letters, odd spacing); the normal form erases those so equal-looking posts share a
key and a verdict. The content key also covers everything else that changes the model's input
or output (kind, prompt context, policy fields that enter the prompt, model and adapter), so a
cached verdict is only reused when the model would have seen the same thing.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Format (Cf: zero-width space/joiners, bidi controls, tag characters, BOM, soft hyphen),
# surrogates (Cs: lone ones survive JSON "\\ud800" escapes) and unassigned code points (Cn).
_DROP_CATEGORIES = frozenset({"Cf", "Cs", "Cn"})
_SPACE = re.compile(r"\s+")
# Variation selectors and combining grapheme joiner are Mn but carry no meaning for moderation.
_INVISIBLE_MARKS = frozenset(
    [0x034F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x115F, 0x1160, 0x3164, 0xFFA0]
)


def normalise(text: str) -> str:
    """Invisible and control characters removed, NFKC, whitespace collapsed, trimmed.

    Removal comes before NFKC so that characters split by an invisible one compose the same
    way as if it had never been there (which also makes `normalise` idempotent).
    """
    out: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            # Controls that mean whitespace become a space; NUL, BEL, ESC … disappear.
            if ch in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85":
                out.append(" ")
        elif cat in _DROP_CATEGORIES or ord(ch) in _INVISIBLE_MARKS:
            continue
        else:
            out.append(ch)
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", "".join(out))).strip()


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
    h = hashlib.blake2b(digest_size=16, person=b"guardstream-ck1")
    for part in (kind, prompt or "", prompt_policy, model, adapter or "", text):
        encoded = part.encode("utf-8", "surrogatepass")
        h.update(len(encoded).to_bytes(8, "big"))
        h.update(encoded)
    return h.hexdigest()
