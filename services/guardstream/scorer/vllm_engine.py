"""Qwen3Guard-Gen on vLLM's async engine in this process (see `guardstream.scorer.engine` for
the scoring modes and the error policy). vLLM is imported only when the engine starts."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from guardstream.contracts.events import Label
from guardstream.model.adapters import Adapter
from guardstream.model.guard import (
    REASON_TOKENS,
    SAFE_ANSWER,
    SAFE_RESPONSE_PREFIX,
    SAFETY_PREFIX,
    ForcedPrefixes,
    ModelUnavailable,
    is_response,
    resolve_model,
)
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import (
    EngineDead,
    RawAnswer,
    ScoringError,
    engine_priority,
    max_input_tokens,
)
from guardstream.scorer.prompt import PromptRenderer, TemplateTooLong

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)


def _memory_fraction(settings: Settings) -> float:
    if settings.engine.gpu_memory_utilization is not None:
        return settings.engine.gpu_memory_utilization
    # lazy: vLLM and torch only in a scorer that runs this engine
    import torch

    return 0.9 if torch.cuda.is_available() else 0.2


class VllmGuardEngine:
    """Qwen3Guard-Gen on vLLM's AsyncLLM, in this process."""

    def __init__(
        self, llm: Any, tokenizer: Any, renderer: PromptRenderer, model_id: str, settings: Settings
    ) -> None:
        self._llm = llm
        self._renderer = renderer
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._mode = settings.engine.scoring_mode
        self._refusal = settings.engine.two_phase_refusal
        self._forced = ForcedPrefixes.of(tokenizer)
        self._label_ids = self._forced.label_token
        self._by_token = {tid: label for label, tid in self._label_ids.items()}
        self._lora = settings.model.adapter_dir is not None
        self._max_model_len = settings.engine.max_model_len
        self._reason_max = settings.engine.max_output_tokens + REASON_TOKENS
        self._lora_ids: dict[str, int] = {}  # adapter id → vLLM's integer LoRA id

        # lazy: vLLM and torch only in a scorer that runs this engine
        from vllm import SamplingParams

        def params(max_tokens: int, *, label_logprobs: bool, detokenize: bool = True) -> Any:
            return SamplingParams(
                temperature=0.0,
                max_tokens=max(1, max_tokens),
                logprob_token_ids=list(self._label_ids.values()) if label_logprobs else None,
                logprobs=len(self._label_ids) if label_logprobs else None,
                skip_special_tokens=True,
                detokenize=detokenize,
            )

        self._params = params(settings.engine.max_output_tokens, label_logprobs=True)
        # One prefill, no decode; the token id is the answer, so no detokenising either.
        self._label_params = params(1, label_logprobs=True, detokenize=False)
        self._detail_params = params(
            settings.engine.max_output_tokens - self._forced.longest, label_logprobs=False
        )
        self._refusal_params = params(2, label_logprobs=False)  # " Yes"/" No", end of turn
        self._params_for = params

    @classmethod
    async def start(cls, settings: Settings) -> VllmGuardEngine:
        """Load the model; raises `ModelUnavailable` with a way out when it cannot."""
        path, model_id = await asyncio.to_thread(resolve_model, settings)
        # lazy: vLLM and torch only in a scorer that runs this engine
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        offline_hint = (
            f"cannot load model {settings.model.name!r}. Without access to the model hub, set "
            "GUARDSTREAM_MODEL=tiny to serve guardstream's own offline test checkpoint, or point "
            "GUARDSTREAM_MODEL at a local directory holding Qwen3Guard-Gen weights."
        )
        try:
            tokenizer: Any = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"{offline_hint} ({type(exc).__name__})") from exc

        try:
            renderer = PromptRenderer(tokenizer, max_input_tokens(settings, tokenizer))
        except TemplateTooLong as exc:
            raise ModelUnavailable(str(exc)) from exc
        args = AsyncEngineArgs(
            model=path,
            served_model_name=model_id,
            dtype=settings.engine.dtype,
            max_model_len=settings.engine.max_model_len,
            gpu_memory_utilization=_memory_fraction(settings),
            enable_prefix_caching=settings.engine.prefix_caching,
            seed=0,
            disable_log_stats=True,
            # Adapters from the registry are served by this one engine, per request.
            enable_lora=settings.model.adapter_dir is not None,
            max_lora_rank=settings.engine.max_lora_rank,
            max_loras=settings.engine.max_loras,
            # Interactive requests (the API's) ahead of the Kafka backlog: `engine_priority`.
            scheduling_policy="priority",
        )
        try:
            llm = AsyncLLM.from_engine_args(args)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"{offline_hint} ({type(exc).__name__}: {exc})") from exc
        log.info(
            "engine ready",
            extra={
                "model": model_id,
                "pid": os.getpid(),
                "scoring_mode": settings.engine.scoring_mode,
            },
        )
        return cls(llm, tokenizer, renderer, model_id, settings)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def alive(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        if self._mode == "plain":
            return await self.assess_plain(messages, request_id, adapter)
        return await self.assess_two_phase(messages, request_id, adapter)

    def _lora_request(self, adapter: Adapter | None) -> Any:
        """vLLM's LoRA request for `adapter`; each adapter id keeps one integer id, so vLLM
        loads its weights once and batches requests for different adapters together."""
        if adapter is None:
            return None
        if not self._lora:
            raise ScoringError(
                f"request names adapter {adapter.adapter_id!r} but this scorer has no adapter "
                "registry (GUARDSTREAM_ADAPTER_DIR)"
            )
        # lazy: vLLM and torch only in a scorer that runs this engine
        from vllm.lora.request import LoRARequest

        number = self._lora_ids.setdefault(adapter.adapter_id, len(self._lora_ids) + 1)
        return LoRARequest(adapter.adapter_id, number, str(adapter.path))

    async def assess_plain(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        """The model writes its whole answer; the label's log-probs are read where it wrote it."""
        ids, truncated = await asyncio.to_thread(self._renderer.render, messages)
        lora = self._lora_request(adapter)
        completion = await self._generate(ids, self._params, request_id, lora)
        return RawAnswer(
            text=completion.text,
            label_logprobs=self._label_logprobs(completion.token_ids, completion.logprobs),
            prompt_tokens=len(ids),
            output_tokens=len(completion.token_ids),
            truncated=truncated,
        )

    async def assess_two_phase(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        """Label from one forced-prefix prefill; details only when the label asks for them."""
        ids, truncated = await asyncio.to_thread(self._renderer.render, messages)
        lora = self._lora_request(adapter)
        first = await self._generate(
            ids + self._forced.safety, self._label_params, f"{request_id}/label", lora
        )
        logprobs = self._label_logprobs(first.token_ids[:1], first.logprobs)
        label = self._by_token.get(first.token_ids[0]) if first.token_ids else None
        answer = RawAnswer(
            # Not a label token: the parser calls it unusable.
            text=SAFETY_PREFIX + self._tokenizer.decode(first.token_ids, skip_special_tokens=True),
            label_logprobs=logprobs,
            prompt_tokens=len(ids),
            output_tokens=len(first.token_ids),
            truncated=truncated,
        )
        if label is None:
            return answer
        reasons = adapter is not None and adapter.trained_with_reasons
        if label == "Safe" and not (self._refusal and is_response(messages)) and not reasons:
            return replace(answer, text=SAFE_ANSWER)
        if label == "Safe" and not is_response(messages):
            # Trained with reasons: the safe answer is forced whole and the model may go on
            # with its `Reason:` line (or end the turn: a confirmation without a reason).
            forced, text, params = self._forced.safe, SAFE_ANSWER, self._detail_params
        elif label == "Safe":
            forced, text, params = (
                self._forced.safe_response,
                SAFE_RESPONSE_PREFIX,
                self._refusal_params,
            )
        else:
            forced, text = self._forced.detail[label], f"{SAFETY_PREFIX} {label}\n"
            params = self._detail_params
        if reasons:
            # Room for the reason line too, within the model's window (the input was cut to
            # leave `max_output_tokens`; a long input leaves the reason less).
            room = self._max_model_len - len(ids) - len(forced)
            params = self._params_for(min(self._reason_max, room), label_logprobs=False)
        second = await self._generate(ids + forced, params, f"{request_id}/detail", lora)
        return replace(
            answer,
            text=text + second.text,
            output_tokens=answer.output_tokens + len(second.token_ids),
            requests=2,
        )

    async def reset_prefix_cache(self) -> None:
        """Forget cached KV blocks (benchmarks start every run from the same cold cache)."""
        if self._llm is not None:
            await self._llm.reset_prefix_cache()

    async def _generate(
        self, ids: list[int], params: Any, request_id: str, lora: Any = None
    ) -> Any:
        """One engine request to completion; vLLM's failures mapped onto our two policies."""
        # lazy: vLLM and torch only in a scorer that runs this engine
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if self._llm is None or self._llm.errored:
            raise EngineDead("the engine is closed or dead")
        final = None
        try:
            async for output in self._llm.generate(
                TokensPrompt(prompt_token_ids=ids),
                params,
                request_id,
                lora_request=lora,
                priority=engine_priority.get(),
            ):
                final = output
        except EngineDeadError as exc:
            raise EngineDead(str(exc)) from exc
        except (EngineGenerateError, ValueError, RuntimeError) as exc:
            if self._llm.errored:  # the request failed because the engine did
                raise EngineDead(f"{type(exc).__name__}: {exc}") from exc
            raise ScoringError(f"{type(exc).__name__}: {exc}") from exc
        if final is None or not final.outputs:
            raise ScoringError("engine returned no output")
        return final.outputs[0]

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
            # vLLM leaves its ZeroMQ context to the garbage collector, which warns about it
            # whenever that happens; its sockets are closed by now, so end it here.
            resources = getattr(getattr(llm, "engine_core", None), "resources", None)
            context = getattr(resources, "ctx", None)
            if context is not None:
                context.destroy(linger=0)
