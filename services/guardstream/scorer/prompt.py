"""Model input: chat messages exactly as Qwen3Guard-Gen expects them, rendered to token ids.

Qwen3Guard-Gen carries its moderation instructions in its own chat template, so the scorer
sends plain conversations: one `user` turn for prompt moderation, `user` + `assistant` for
response moderation. User text cannot forge conversation structure: chat-template control
tokens, the template's section markers and its role/label line prefixes are broken up before
rendering (`neutralise`), so every prompt holds exactly one conversation block. A conversation
longer than the model's window is shortened inside each turn, keeping its head and its tail
(harm hidden after benign padding stays visible); the template itself is never cut, nor is a
policy pack's category block (a leading `categories` message, `model.guard.chat_args`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Kind, ScoreRequest
from guardstream.contracts.text import neutralise
from guardstream.model.guard import CATEGORIES_ROLE, chat_args
from guardstream.policy.prompt import category_block

ELISION = " … "


def messages_for(request: ScoreRequest) -> list[dict[str, str]]:
    """The conversation to judge. A policy pack's prefix (domain tags, region hint, e.g.
    `[领域:公共卫生][敏感类型:污名化]`) opens the user turn, as in the seed articles; the pack
    renders it safe, and it is part of the content key."""
    # The pack renders its prefix safe; neutralising it again (idempotent) keeps a forged
    # request from the wire from adding structure.
    prefix = f"{neutralise(request.prompt_prefix)} " if request.prompt_prefix else ""
    # The pack's own categories replace the nine in the template (rendered from the request's
    # list exactly as triage rendered it for the content key).
    head = []
    if request.categories:
        block = category_block(request.categories, response=request.kind is Kind.RESPONSE)
        head = [{"role": CATEGORIES_ROLE, "content": neutralise(block)}]
    if request.kind is Kind.RESPONSE:
        return [
            *head,
            {"role": "user", "content": prefix + neutralise(request.prompt or "")},
            {"role": "assistant", "content": neutralise(request.text)},
        ]
    return [*head, {"role": "user", "content": prefix + neutralise(request.text)}]


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the renderer uses."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str: ...


class TemplateTooLong(PermanentError, ValueError):
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
        turns, template = chat_args(messages)
        text = self._tok.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True, **template
        )
        return list(self._tok.encode(text, add_special_tokens=False))

    def render(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], bool]:
        """(prompt token ids, whether any turn was shortened)."""
        ids = self.encode(messages)
        if len(ids) <= self._max_input:
            return ids, False
        # Only conversation turns are shortened: a category block is part of the template.
        fixed = [m for m in messages if m["role"] == CATEGORIES_ROLE]
        turns = [m for m in messages if m["role"] != CATEGORIES_ROLE]
        contents = [self._tok.encode(m["content"], add_special_tokens=False) for m in turns]
        overhead = len(ids) - sum(map(len, contents))
        elision = len(self._tok.encode(ELISION, add_special_tokens=False))
        budget = self._max_input - overhead - elision * len(turns)
        # Re-tokenising the joined pieces can merge differently at the seams: shrink and retry.
        for _ in range(4):
            keep = share_budget([len(c) for c in contents], budget)
            shortened = fixed + [
                {**message, "content": self._cut(content, kept)}
                for message, content, kept in zip(turns, contents, keep, strict=True)
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
