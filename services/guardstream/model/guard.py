"""The guard model itself, apart from any engine: which model is served (`GUARDSTREAM_MODEL`,
the tiny test checkpoint or a Qwen3Guard-Gen hub id), the id recorded on decisions and cache
keys, and the answer format two-phase scoring forces (`Safety:` prefixes, label tokens).
Triage, the scorer and the feedback loop share it; it loads no model (torch stays out).

A policy pack's own categories reach the prompt as a leading `categories` message (its
content the rendered block, `policy.prompt.category_block`); `chat_args` turns that into the
shipped template with the category list swapped for the block, for serving and training alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Label
from guardstream.contracts.labels import LABELS
from guardstream.model.tiny import CATEGORIES_ROLE as CATEGORIES_ROLE
from guardstream.model.tiny import TINY_BUILDER_VERSION, ensure_tiny_checkpoint
from guardstream.model.tiny import categories_template as categories_template
from guardstream.runtime.settings import Settings

TINY_MODEL = "tiny"


class ModelUnavailable(PermanentError):
    """The configured model cannot be loaded (not downloadable, not on disk)."""


def served_model_id(settings: Settings) -> str:
    """The model id recorded on decisions and in cache keys (triage needs it without a model)."""
    if settings.model.name == TINY_MODEL:
        return f"guardstream-tiny-{TINY_BUILDER_VERSION}"
    return settings.model.name


def resolve_model(settings: Settings) -> tuple[str, str]:
    """(path or hub id to load, model id recorded on decisions and in cache keys)."""
    if settings.model.name == TINY_MODEL:
        return str(ensure_tiny_checkpoint(settings.model.cache_dir)), served_model_id(settings)
    return settings.model.name, settings.model.name


SAFETY_PREFIX = "Safety:"
# What a safe label stands for without generating it, and where a safe response's refusal
# is read (one token: " Yes" / " No").
SAFE_ANSWER = "Safety: Safe\nCategories: None"
SAFE_RESPONSE_PREFIX = SAFE_ANSWER + "\nRefusal:"
# An adapter trained with reviewers' reasons may write one more line, `Reason: …` (at most 50
# characters of reason, a few tokens each in a byte-level vocabulary): room for it beyond the
# answer's `max_output_tokens`, so the Qwen3Guard lines never lose room to it.
REASON_TOKENS = 160


@dataclass(frozen=True, slots=True)
class ForcedPrefixes:
    """Token ids of the assistant-turn prefixes two-phase scoring forces, per tokenizer."""

    safety: list[int]
    label_token: dict[Label, int]  # first token of " <Label>" after `Safety:`
    detail: dict[Label, list[int]]  # `Safety: <Label>\n`
    safe_response: list[int]
    safe: list[int]  # the whole safe answer, for a reason line to follow

    @classmethod
    def of(cls, tokenizer: Any) -> ForcedPrefixes:
        def enc(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False))

        label_token = {label: enc(" " + label)[0] for label in LABELS}
        if len(set(label_token.values())) != len(LABELS):
            raise ModelUnavailable(f"label tokens collide in this tokenizer: {label_token}")
        return cls(
            safety=enc(SAFETY_PREFIX),
            label_token=label_token,
            detail={label: enc(f"{SAFETY_PREFIX} {label}\n") for label in LABELS},
            safe_response=enc(SAFE_RESPONSE_PREFIX),
            safe=enc(SAFE_ANSWER),
        )

    @property
    def longest(self) -> int:
        return max(len(self.safe_response), *(len(ids) for ids in self.detail.values()))


def is_response(messages: Sequence[dict[str, str]]) -> bool:
    """Response moderation judges a last assistant turn (and answers with a refusal line)."""
    return bool(messages) and messages[-1].get("role") == "assistant"


def chat_args(
    messages: Sequence[dict[str, str]],
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(the conversation turns, extra `apply_chat_template` arguments) for `messages`: a
    `categories` message becomes `categories_template()` and its block; without one, the
    tokenizer's own template (the real Qwen3Guard's, or the shipped one on the tiny model)."""
    turns = [m for m in messages if m.get("role") != CATEGORIES_ROLE]
    blocks = [m["content"] for m in messages if m.get("role") == CATEGORIES_ROLE]
    if not blocks:
        return turns, {}
    return turns, {"chat_template": categories_template(), "guard_categories": blocks[0]}
