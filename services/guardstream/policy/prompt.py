"""The part of a policy pack the model sees: domain tags and the region hint, as a prefix.

Rendered like the seeds' feedback loop writes it, `[领域:公共卫生][敏感类型:污名化]`, with the
region hint last as `[地区:…]` (Chinese keys like the seeds'; the model reads both languages).
The scorer puts the prefix and one space before the text being judged (`apply_prefix`).
Tag keys and values are neutralised alike (values may one day come from reviewers' notes): they
cannot close their tag and open another, break a line, or carry chat-template control tokens,
section markers or role/label prefixes.
`prompt_fingerprint` is what the content key hashes for the pack: exactly the rendered
prefix, so thresholds and actions can change without invalidating cached verdicts.
"""

from __future__ import annotations

from guardstream.contracts.text import neutralise, normalise
from guardstream.policy.pack import REGION_TAG, PolicyPack

# Lenticular brackets: same reading for a Chinese model, and NFKC leaves them alone (the
# full-width "［" would turn back into "[" under NFKC).
_BRACKETS = str.maketrans({"[": "【", "]": "】"})
# A key's colon (NFKC makes one of `﹕`) would end it early: U+2236 RATIO reads the same.
_KEY_COLON = str.maketrans({":": "∶"})
_FINGERPRINT_FORMAT = "prompt-v1"


def neutral_value(value: str) -> str:
    """A tag value that stays inside its tag: NFKC first (so look-alike brackets and line
    breaks become plain ones and are caught), then template tokens and brackets defused."""
    return neutralise(normalise(value)).translate(_BRACKETS)


def prompt_prefix(pack: PolicyPack) -> str:
    """`[key:value]…[地区:hint]` in the pack's tag order, or "" when the pack adds nothing."""
    tags = list(pack.domain_tags.items())
    if pack.region_hint is not None:
        tags.append((REGION_TAG, pack.region_hint))
    return "".join(
        f"[{neutral_value(key).translate(_KEY_COLON)}:{neutral_value(value)}]"
        for key, value in tags
    )


def apply_prefix(pack: PolicyPack, text: str) -> str:
    prefix = prompt_prefix(pack)
    return f"{prefix} {text}" if prefix else text


def prompt_fingerprint(pack: PolicyPack) -> str:
    """Stable over everything the pack changes in the model input, and nothing else.

    Empty for a pack without tags or hint, which is `content_key`'s default: the default
    pack shares cache entries with decisions made before packs existed.
    """
    prefix = prompt_prefix(pack)
    return f"{_FINGERPRINT_FORMAT}:{prefix}" if prefix else ""
