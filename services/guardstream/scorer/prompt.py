"""Model input: chat messages exactly as Qwen3Guard-Gen expects them.

Qwen3Guard-Gen carries its moderation instructions in its own chat template, so the scorer
sends plain conversations: one `user` turn for prompt moderation, `user` + `assistant` for
response moderation. User text cannot forge conversation structure: chat-template control
tokens in it are broken up before rendering.
"""

from __future__ import annotations

import re

from guardstream.core.contracts import Kind, ScoreRequest

# `<|im_start|>`, `<|endoftext|>`, any `<|…|>` special, and Qwen3's `<think>` tags.
_CONTROL = re.compile(r"<\|[^<>|\s]{0,40}\|>|</?think>", re.IGNORECASE)


def neutralise(text: str) -> str:
    """Break template control tokens so the tokenizer reads them as plain text."""
    return _CONTROL.sub(lambda m: m.group(0).replace("<", "‹").replace(">", "›"), text)


def messages_for(request: ScoreRequest) -> list[dict[str, str]]:
    if request.kind is Kind.RESPONSE:
        return [
            {"role": "user", "content": neutralise(request.prompt or "")},
            {"role": "assistant", "content": neutralise(request.text)},
        ]
    return [{"role": "user", "content": neutralise(request.text)}]
