"""The guard model behind a small interface: chat messages in, the model's raw answer out.

`GuardEngine` is the seam the scorer depends on; `VllmGuardEngine` runs Qwen3Guard-Gen in
vLLM's async engine in this process (continuous batching: many `assess` calls in flight at
once share forward passes). The prompt is rendered with the model's own chat template, over-long
inputs keep their head and tail, decoding is greedy, and the three label tokens' log-probs are
returned at the label position so confidence is a real probability, not a guess.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from guardstream.core.contracts import Label
from guardstream.core.settings import Settings
from guardstream.scorer.output import LABELS
from guardstream.scorer.prompt import PromptRenderer, TemplateTooLong

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

TINY_MODEL = "tiny"


class ScoringError(Exception):
    """The engine failed this request; retrying later may succeed."""

    retriable: ClassVar[bool] = True


class EngineDead(Exception):
    """The engine cannot serve any more requests; the process must restart."""

    retriable: ClassVar[bool] = False


class ModelUnavailable(Exception):
    """The configured model cannot be loaded (not downloadable, not on disk)."""

    retriable: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """The model's answer to one conversation, before any interpretation."""

    text: str
    # log P(label) at the label position, for each label; empty when no label was generated.
    label_logprobs: dict[Label, float | None] = field(default_factory=dict)
    prompt_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False


class GuardEngine(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def adapter(self) -> str | None: ...

    async def assess(self, messages: Sequence[dict[str, str]], request_id: str) -> RawAnswer: ...

    async def close(self) -> None: ...


def served_model_id(settings: Settings) -> str:
    """The model id recorded on decisions and in cache keys (triage needs it without a model)."""
    if settings.model == TINY_MODEL:
        from guardstream.model.tiny import TINY_BUILDER_VERSION

        return f"guardstream-tiny-{TINY_BUILDER_VERSION}"
    return settings.model


def resolve_model(settings: Settings) -> tuple[str, str]:
    """(path or hub id to load, model id recorded on decisions and in cache keys)."""
    if settings.model == TINY_MODEL:
        from guardstream.model.tiny import ensure_tiny_checkpoint

        return str(ensure_tiny_checkpoint(settings.model_cache_dir)), served_model_id(settings)
    return settings.model, settings.model


def _memory_fraction(settings: Settings) -> float:
    if settings.gpu_memory_utilization is not None:
        return settings.gpu_memory_utilization
    import torch

    return 0.9 if torch.cuda.is_available() else 0.2


class VllmGuardEngine:
    """Qwen3Guard-Gen on vLLM's AsyncLLM, in this process."""

    def __init__(
        self, llm: Any, tokenizer: Any, renderer: PromptRenderer, model_id: str, settings: Settings
    ) -> None:
        self._llm = llm
        self._renderer = renderer
        self._model_id = model_id
        label_ids: dict[Label, int] = {}
        for label in LABELS:
            ids = tokenizer.encode(" " + label, add_special_tokens=False)
            label_ids[label] = ids[0]
        if len(set(label_ids.values())) != len(LABELS):
            raise ModelUnavailable(f"label tokens collide in this tokenizer: {label_ids}")
        self._label_ids = label_ids
        self._by_token = {tid: label for label, tid in label_ids.items()}

        from vllm import SamplingParams

        self._params = SamplingParams(
            temperature=0.0,
            max_tokens=settings.max_output_tokens,
            logprob_token_ids=list(label_ids.values()),
            logprobs=len(label_ids),
            skip_special_tokens=True,
        )

    @classmethod
    async def start(cls, settings: Settings) -> VllmGuardEngine:
        """Load the model; raises `ModelUnavailable` with a way out when it cannot."""
        path, model_id = await asyncio.to_thread(resolve_model, settings)
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        offline_hint = (
            f"cannot load model {settings.model!r}. Without access to the model hub, set "
            "GUARDSTREAM_MODEL=tiny to serve guardstream's own offline test checkpoint, or point "
            "GUARDSTREAM_MODEL at a local directory holding Qwen3Guard-Gen weights."
        )
        try:
            tokenizer: Any = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"{offline_hint} ({type(exc).__name__})") from exc

        try:
            max_input = settings.max_model_len - settings.max_output_tokens
            renderer = PromptRenderer(tokenizer, max_input)
        except TemplateTooLong as exc:
            raise ModelUnavailable(str(exc)) from exc
        args = AsyncEngineArgs(
            model=path,
            served_model_name=model_id,
            dtype=settings.model_dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=_memory_fraction(settings),
            enable_prefix_caching=True,
            seed=0,
            disable_log_stats=True,
        )
        try:
            llm = AsyncLLM.from_engine_args(args)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"{offline_hint} ({type(exc).__name__}: {exc})") from exc
        log.info("engine ready", extra={"model": model_id, "pid": os.getpid()})
        return cls(llm, tokenizer, renderer, model_id, settings)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def adapter(self) -> str | None:
        return None

    async def assess(self, messages: Sequence[dict[str, str]], request_id: str) -> RawAnswer:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        ids, truncated = await asyncio.to_thread(self._renderer.render, messages)
        final = None
        try:
            async for output in self._llm.generate(
                TokensPrompt(prompt_token_ids=ids), self._params, request_id
            ):
                final = output
        except EngineDeadError as exc:
            raise EngineDead(str(exc)) from exc
        except (ValueError, RuntimeError) as exc:
            raise ScoringError(f"{type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise ScoringError("engine returned no output")
        completion = final.outputs[0]
        return RawAnswer(
            text=completion.text,
            label_logprobs=self._label_logprobs(completion.token_ids, completion.logprobs),
            prompt_tokens=len(ids),
            output_tokens=len(completion.token_ids),
            truncated=truncated,
        )

    def _label_logprobs(
        self, token_ids: Sequence[int], logprobs: Sequence[dict[int, Any]] | None
    ) -> dict[Label, float | None]:
        """Log-probs of the three labels at the first position where a label was generated."""
        if not logprobs:
            return {}
        for position, token in enumerate(token_ids):
            if token in self._by_token and position < len(logprobs):
                at = logprobs[position]
                return {
                    label: (at[tid].logprob if tid in at else None)
                    for label, tid in self._label_ids.items()
                }
        return {}

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
            # AsyncLLM.__del__ shuts down again; at interpreter exit that raises (module
            # globals are gone) and prints a traceback into the logs. Once is enough.
            llm.shutdown = lambda *args, **kwargs: None
