"""The guard model behind a small interface: chat messages in, the model's raw answer out.

`GuardEngine` is the seam the scorer depends on; `VllmGuardEngine` runs Qwen3Guard-Gen in
vLLM's async engine in this process (continuous batching: many `assess` calls in flight at
once share forward passes). The prompt is rendered with the model's own chat template, over-long
inputs keep their head and tail, decoding is greedy, and the three label tokens' log-probs are
returned at the label position so confidence is a real probability, not a guess.

Two scoring modes give the same answer text to the same parser:

- `two_phase` (default): the assistant turn is forced to start with `Safety:` and ONE token is
  generated with the label tokens' log-probs (one prefill, no decode). A safe prompt is done
  (`Categories: None`). Otherwise a second request continues from `Safety: <Label>\n` to write
  `Categories:` (and `Refusal:` for a response); a safe response only has its refusal read,
  one token after a forced `Safety: Safe\nCategories: None\nRefusal:` (setting
  `two_phase_refusal`). Prefix caching makes the second prefill nearly free. An adapter
  trained with reviewers' reasons (`Adapter.trained_with_reasons`) may write a `Reason:` line
  after those lines: its second request gets `REASON_TOKENS` more room, and a safe label a
  second request too, continuing after the forced `Safety: Safe\nCategories: None`.
- `plain`: the model generates its whole answer.

Errors carry their policy: `ScoringError` (this request failed, retry later) vs `EngineDead`
(no request can succeed any more; the process must stop and be restarted).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from guardstream.contracts.errors import PermanentError, TransientError
from guardstream.contracts.events import Label
from guardstream.model.adapters import Adapter
from guardstream.model.guard import ForcedPrefixes
from guardstream.runtime.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)


# Engine priority of the requests made in the current context (lower first, as vLLM orders
# them): the scorer's interactive door sets `INTERACTIVE` for its requests, so the API's
# callers are scheduled ahead of the Kafka backlog. A context variable rather than an
# `assess` argument: the scorer's coalescing task inherits it where the request started, and
# every engine and wrapper (metering, test engines) passes it along untouched.
INTERACTIVE = 0
STREAM = 1
engine_priority: ContextVar[int] = ContextVar("guardstream_engine_priority", default=STREAM)


class ScoringError(TransientError):
    """The engine failed this request; retrying later may succeed."""


class EngineDead(PermanentError):
    """The engine cannot serve any more requests; the process must restart."""


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """The model's answer to one conversation, before any interpretation."""

    text: str
    # log P(label) at the label position, for each label; empty when no label was generated.
    label_logprobs: dict[Label, float | None] = field(default_factory=dict)
    prompt_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False
    requests: int = 1  # engine requests it took (two-phase: 1 or 2)


class GuardEngine(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def alive(self) -> bool:
        """False once the engine can serve nothing any more (liveness probe)."""
        ...

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer: ...

    async def close(self) -> None: ...


def max_input_tokens(settings: Settings, tokenizer: Any) -> int:
    """Room for the rendered conversation: the window minus the answer and forced prefix."""
    forced = ForcedPrefixes.of(tokenizer).longest
    room: int = settings.engine.max_model_len - settings.engine.max_output_tokens - forced
    return room
