"""Model input: chat messages exactly as Qwen3Guard-Gen expects them, rendered to token ids.

Qwen3Guard-Gen carries its moderation instructions in its own chat template, so the scorer
sends plain conversations: one `user` turn for prompt moderation, `user` + `assistant` for
response moderation. User text cannot forge conversation structure: chat-template control
tokens, the template's section markers and its role/label line prefixes are broken up before
rendering (`neutralise`), so every prompt holds exactly one conversation block. A conversation
longer than the model's window is shortened inside each turn, keeping its head and its tail
(harm hidden after benign padding stays visible); the template itself is never cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from guardstream.core.contracts import Kind, ScoreRequest

ELISION = " … "

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


def messages_for(request: ScoreRequest) -> list[dict[str, str]]:
    """The conversation to judge. A policy pack's prefix (domain tags, region hint, e.g.
    `[领域:公共卫生][敏感类型:污名化]`) opens the user turn, as in the seed articles; the pack
    renders it safe, and it is part of the content key."""
    # The pack renders its prefix safe; neutralising it again (idempotent) keeps a forged
    # request from the wire from adding structure.
    prefix = f"{neutralise(request.prompt_prefix)} " if request.prompt_prefix else ""
    if request.kind is Kind.RESPONSE:
        return [
            {"role": "user", "content": prefix + neutralise(request.prompt or "")},
            {"role": "assistant", "content": neutralise(request.text)},
        ]
    return [{"role": "user", "content": prefix + neutralise(request.text)}]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the renderer uses."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str: ...


class TemplateTooLong(ValueError):
    """The moderation template alone does not fit the configured window."""


def share_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """Tokens each turn may keep so the total fits `budget`: short turns keep everything, the
    rest is shared equally among the long ones (water-filling)."""
    keep = [0] * len(lengths)
    remaining = max(budget, 0)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for position, index in enumerate(order):
        share = remaining // (len(order) - position)
        keep[index] = min(lengths[index], share)
        remaining -= keep[index]
    return keep


class PromptRenderer:
    """Chat messages → prompt token ids within `max_input` tokens."""

    def __init__(self, tokenizer: ChatTokenizer, max_input: int) -> None:
        self._tok = tokenizer
        self._max_input = max_input
        probe = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
        overhead = len(self.encode(probe))
        if overhead + 64 > max_input:
            raise TemplateTooLong(
                f"the moderation template needs {overhead} tokens; max_model_len leaves "
                f"{max_input} for input: raise GUARDSTREAM_MAX_MODEL_LEN"
            )

    def encode(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = self._tok.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return list(self._tok.encode(text, add_special_tokens=False))

    def render(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], bool]:
        """(prompt token ids, whether any turn was shortened)."""
        ids = self.encode(messages)
        if len(ids) <= self._max_input:
            return ids, False
        contents = [self._tok.encode(m["content"], add_special_tokens=False) for m in messages]
        overhead = len(ids) - sum(map(len, contents))
        elision = len(self._tok.encode(ELISION, add_special_tokens=False))
        budget = self._max_input - overhead - elision * len(messages)
        # Re-tokenising the joined pieces can merge differently at the seams: shrink and retry.
        for _ in range(4):
            keep = share_budget([len(c) for c in contents], budget)
            shortened = [
                {**message, "content": self._cut(content, kept)}
                for message, content, kept in zip(messages, contents, keep, strict=True)
            ]
            ids = self.encode(shortened)
            if len(ids) <= self._max_input:
                return ids, True
            budget -= len(ids) - self._max_input + 8
        raise TemplateTooLong("could not fit the conversation into the model window")

    def _cut(self, content: list[int], keep: int) -> str:
        if keep >= len(content):
            return self._tok.decode(content)
        head = keep - keep // 2
        tail = keep // 2
        return (
            self._tok.decode(content[:head])
            + ELISION
            + (self._tok.decode(content[-tail:]) if tail else "")
        )
