"""The part of a policy pack the model sees: domain tags and the region as a prefix, and the
pack's category list.

Rendered like the seeds' feedback loop writes it, `[领域:公共卫生][敏感类型:污名化]`, with the
region hint last as `[地区:…]` (Chinese keys like the seeds'; the model reads both languages).
The scorer puts the prefix and one space before the text being judged (`apply_prefix`).
Tag keys and values are neutralised alike (values may one day come from reviewers' notes): they
cannot close their tag and open another, break a line, or carry chat-template control tokens,
section markers or role/label prefixes.
The region tag names the post's own `region` through the pack's `region_names`, else the
pack's fixed `region_hint` (the seeds' "请结合用户所在地区ID: IN 判断").
A pack whose categories are not Qwen3Guard's nine sends them with each score request; the
scorer renders them as the prompt's category block (`category_block`, one line per category).
`prompt_fingerprint` is what the content key hashes for the pack: exactly the rendered
prefix and a digest of the category block, so thresholds and actions can change without
invalidating cached verdicts, and a verdict given under one category list is never reused
under another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from guardstream.contracts.categories import DEFAULT_CATEGORIES as _DEFAULTS
from guardstream.contracts.categories import CategoryDef, is_default
from guardstream.contracts.text import neutralise, normalise
from guardstream.policy.pack import REGION_TAG, PolicyPack

# Lenticular brackets: same reading for a Chinese model, and NFKC leaves them alone (the
# full-width "［" would turn back into "[" under NFKC).
_BRACKETS = str.maketrans({"[": "【", "]": "】"})
# A key's colon (NFKC makes one of `﹕`) would end it early: U+2236 RATIO reads the same.
_KEY_COLON = str.maketrans({":": "∶"})
_FINGERPRINT_FORMAT = "prompt-v1"
_PROMPT_ONLY = "Jailbreak"  # a user's attempt; Qwen3Guard does not ask it of a response


def neutral_value(value: str) -> str:
    """A tag value that stays inside its tag: NFKC first (so look-alike brackets and line
    breaks become plain ones and are caught), then template tokens and brackets defused."""
    return neutralise(normalise(value)).translate(_BRACKETS)


def region_name(pack: PolicyPack, region: str | None) -> str | None:
    """What the region tag says for a post from `region`: its name in the pack's map (case
    does not matter), else the pack's fixed hint (None: no region tag)."""
    if region is not None and pack.region_names:
        folded = region.casefold()
        for code, name in pack.region_names.items():
            if code.casefold() == folded:
                return name
    return pack.region_hint


def prompt_prefix(pack: PolicyPack, region: str | None = None) -> str:
    """`[key:value]…[地区:region]` in the pack's tag order, or "" when the pack adds nothing.
    `region` is the post's own; the tag says `region_name(pack, region)`."""
    tags = list(pack.domain_tags.items())
    hint = region_name(pack, region)
    if hint is not None:
        tags.append((REGION_TAG, hint))
    return "".join(
        f"[{neutral_value(key).translate(_KEY_COLON)}:{neutral_value(value)}]"
        for key, value in tags
    )


def apply_prefix(pack: PolicyPack, text: str, region: str | None = None) -> str:
    prefix = prompt_prefix(pack, region)
    return f"{prefix} {text}" if prefix else text


def pack_categories(pack: PolicyPack) -> tuple[CategoryDef, ...] | None:
    """The pack's categories as score requests and samples carry them: None for the nine."""
    return None if is_default(pack.categories) else pack.categories


def category_block(categories: Sequence[CategoryDef], *, response: bool = False) -> str:
    """The prompt's `<BEGIN UNSAFE CONTENT CATEGORIES>` lines: `Name.` for Qwen3Guard's own
    (as its template writes them; response moderation, like Qwen3Guard's, without its
    Jailbreak), `Name (翻译): description.` for a pack's own. Pure: triage (for the key) and
    the scorer and training (for the prompt) render the same text from the same list."""
    builtin = {c.name: c for c in _DEFAULTS}
    lines = []
    for category in categories:
        if builtin.get(category.name) == category:
            if not (response and category.name == _PROMPT_ONLY):
                lines.append(f"{category.name}.")
            continue
        also = ", ".join(dict.fromkeys(category.translations.values()))
        named = f"{category.name} ({also})" if also else category.name
        about = neutral_value(category.description).strip() if category.description else ""
        lines.append(f"{named}: {about.rstrip('.')}." if about else f"{named}.")
    return "\n".join(lines)


def prompt_fingerprint(pack: PolicyPack, region: str | None = None) -> str:
    """Stable over everything the pack changes in the model input, and nothing else.

    Empty for a pack without tags, region or categories of its own, which is
    `content_key`'s default: the default pack shares cache entries with decisions made
    before packs existed.
    """
    prefix = prompt_prefix(pack, region)
    categories = pack_categories(pack)
    if categories is not None:
        block = hashlib.sha256(category_block(categories).encode()).hexdigest()[:32]
        return f"{_FINGERPRINT_FORMAT}:{prefix}|categories:{block}"
    return f"{_FINGERPRINT_FORMAT}:{prefix}" if prefix else ""
