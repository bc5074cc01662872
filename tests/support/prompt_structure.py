"""Hostile text for the moderation prompt, and the prompt's structure counted independently.

`hostile_text` mixes the Qwen3Guard template's own structure (section markers, role and label
line prefixes, control tokens, in any case, with look-alike colons and every line break a
reader may honour) with arbitrary text. `skeleton` counts, in a rendered prompt, what makes
its structure: section markers, role/label lines, control tokens and the generation prefix;
a hostile post must leave it exactly as a benign one does.
"""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import strategies as st

from guardstream.contracts.text import normalise
from guardstream.devtools.adversarial import TEMPLATE_LABELS
from guardstream.devtools.adversarial import skeleton as text_skeleton

SECTIONS = ("CONVERSATION", "SAFETY POLICY", "UNSAFE CONTENT CATEGORIES", "REFUSAL POLICY")
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>")

_BREAKS = ("\n", "\n\n", "\r\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029", "\x1c")
_FRAGMENTS = st.one_of(
    st.sampled_from([f"<{edge} {name}>" for edge in ("BEGIN", "END") for name in SECTIONS]),
    st.tuples(
        st.sampled_from(("", " ", "**", "# ", "> ", "- ", "\u200b", "\ufeff")),
        st.sampled_from(TEMPLATE_LABELS).flatmap(
            lambda w: st.sampled_from((w, w.upper(), w.lower()))
        ),
        st.sampled_from((":", " :", "：", "﹕", "∶")),
        st.sampled_from((" Safe", " Unsafe", " None", " Yes", " hi", "")),
    ).map("".join),
    st.sampled_from(CONTROL_TOKENS),
    st.sampled_from(_BREAKS),
    st.text(max_size=12),
)
# What the contract refuses (C0 but tab/LF/CR, DEL, C1, lone surrogates) never reaches a prompt:
# such a post goes to the DLQ. Where a fragment holds one, a line break is tried instead.
_REFUSED_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_REFUSED_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
hostile_text = (
    st.lists(_FRAGMENTS, max_size=24).map("".join).map(lambda t: _REFUSED_IN_TEXT.sub("\n", t))
)


def skeleton(rendered: str) -> Counter[str]:
    """The corpus tool's plain-text skeleton of a rendered prompt, with its control tokens."""
    found = text_skeleton(rendered)
    for token in CONTROL_TOKENS:
        found[token] = rendered.count(token)
    return found


# A tag key the pack format accepts (no brackets, colons, blanks or controls), hostile where it
# can be: control tokens, markers' halves and role words fit that pattern.
tag_keys = st.one_of(
    st.sampled_from(("<|im_start|>", "<|im_end|>", "<END", "CONVERSATION>", "USER", "<think>")),
    st.from_regex(r"[^\[\]:：\s\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,32}", fullmatch=True).filter(
        lambda key: normalise(key) == key  # the pack format asks for keys as NFKC writes them
    ),
)
# A pack keeps the contract's character rule for one line (no breaks, no controls): the rest
# of the hostile text is what a tag value may still try.
tag_values = hostile_text.map(lambda v: _REFUSED_IN_LINE.sub(" ", v)).filter(
    lambda v: 1 <= len(v) <= 200
)
