"""Qwen3Guard-Gen on plain transformers, for machines without vLLM (laptops, offline GPUs).

Same prompt rendering (`PromptRenderer`), same forced prefixes and the same answer text for
the same parser as `VllmGuardEngine`; only the execution differs. Concurrent `assess` calls
are gathered into batches (up to `scorer_batch_max`, as they arrive) and run in a worker
thread: two-phase scoring is one left-padded forward pass over `prompt + "Safety:"` for the
whole batch (the label distribution at the last position), then one batched greedy
generation from `Safety: <Label>\\n` for the posts that need details. Plain mode is one
batched greedy generation.

Shared-prefix reuse (`GUARDSTREAM_PREFIX_CACHING`, on by default): every prompt starts with
the same template instructions, about half of a 300-token post's prompt. The token prefix all
sequences of a batch share is prefilled once, its KV cache repeated over the batch, and only
each post's own tokens are computed, laid out as `[shared prefix][left padding][own tokens]`
with positions that skip the padding (so the model sees what it would see unpadded). Batches
are formed per template (prompt or response moderation), whose instructions differ early on.
Recent shared prefixes are kept and reused by later batches that start with one, one-post
batches included. This is a simpler cousin of vLLM's block-level prefix caching: the two
phases do not share KV beyond that prefix, so use vLLM where it runs.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from guardstream.contracts.events import Label
from guardstream.model.adapters import Adapter
from guardstream.model.guard import (
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

log = logging.getLogger(__name__)

# A shared prefix shorter than this is not worth a separate prefill.
MIN_SHARED_PREFIX = 16
KNOWN_PREFIXES = 8


@dataclass
class _Job:
    ids: list[int]
    messages: Sequence[dict[str, str]]
    truncated: bool
    plain: bool
    done: asyncio.Future[RawAnswer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TransformersGuardEngine:
    """Batched forced-prefix scoring with a Hugging Face causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        renderer: PromptRenderer,
        model_id: str,
        settings: Settings,
    ) -> None:
        self._model = model
        self._tok = tokenizer
        self._renderer = renderer
        self._model_id = model_id
        self._mode = settings.engine.scoring_mode
        self._refusal = settings.engine.two_phase_refusal
        self._max_output = settings.engine.max_output_tokens
        self._batch_max = settings.scorer.batch_max
        self._forced = ForcedPrefixes.of(tokenizer)
        self._detail_max = max(1, self._max_output - self._forced.longest)  # as the vLLM engine
        self._by_token = {tid: label for label, tid in self._forced.label_token.items()}
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._eos = tokenizer.eos_token_id
        self._share_prefix = settings.engine.prefix_caching
        self._prefixes: list[tuple[list[int], Any]] = []  # shared prefixes and KV, newest first
        # (priority, arrival, job): interactive requests join the next batch first.
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._arrivals = 0
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # model batches run (tests and benchmarks read it)

    @classmethod
    async def start(cls, settings: Settings) -> TransformersGuardEngine:
        path, model_id = await asyncio.to_thread(resolve_model, settings)

        try:
            model, tokenizer = await asyncio.to_thread(_load, path, settings.engine.dtype)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"cannot load model {settings.model.name!r} with transformers "
                f"({type(exc).__name__}); GUARDSTREAM_MODEL=tiny serves the offline checkpoint"
            ) from exc
        try:
            max_input = max_input_tokens(settings, tokenizer)
            renderer = PromptRenderer(tokenizer, max_input)
        except TemplateTooLong as exc:
            raise ModelUnavailable(str(exc)) from exc
        log.info("engine ready", extra={"model": model_id, "engine": "transformers"})
        return cls(model, tokenizer, renderer, model_id, settings)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def alive(self) -> bool:
        return not self._closed and (self._worker is None or not self._worker.done())

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        if adapter is not None:
            raise ScoringError(
                f"request names adapter {adapter.adapter_id!r}: LoRA adapters are served by the "
                "vLLM engine (GUARDSTREAM_ENGINE=vllm)"
            )
        return await self._submit(messages, plain=self._mode == "plain")

    async def assess_plain(self, messages: Sequence[dict[str, str]], request_id: str) -> RawAnswer:
        return await self._submit(messages, plain=True)

    async def assess_two_phase(
        self, messages: Sequence[dict[str, str]], request_id: str
    ) -> RawAnswer:
        return await self._submit(messages, plain=False)

    async def reset_prefix_cache(self) -> None:
        """Forget the known shared prefixes (benchmarks start each run cold)."""
        self._prefixes = []

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # --- batching ------------------------------------------------------------------------------
    async def _submit(self, messages: Sequence[dict[str, str]], *, plain: bool) -> RawAnswer:
        if not self.alive:
            raise EngineDead("the transformers engine is closed or its worker died")
        # The place in line is taken on arrival, before rendering (threads finish in any
        # order): within a priority, jobs are served in the order they were submitted.
        self._arrivals += 1
        arrival = self._arrivals
        ids, truncated = await asyncio.to_thread(self._renderer.render, messages)
        job = _Job(ids, messages, truncated, plain)
        if self._worker is None:
            self._worker = asyncio.create_task(self._run())
        await self._queue.put((engine_priority.get(), arrival, job))
        return await job.done

    async def _run(self) -> None:
        while True:
            jobs = [(await self._queue.get())[2]]
            while len(jobs) < self._batch_max and not self._queue.empty():
                jobs.append(self._queue.get_nowait()[2])
            # One model batch per mode and template (prompt or response moderation): each
            # shares a long prompt prefix (see the module doc).
            groups: dict[tuple[bool, bool], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.plain, is_response(job.messages)), []).append(job)
            for (plain, _), group in groups.items():
                self.batches += 1
                try:
                    run = self._plain_batch if plain else self._two_phase_batch
                    answers = await asyncio.to_thread(run, group)
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory: retry later
                    for job in group:
                        job.done.set_exception(ScoringError(f"{type(exc).__name__}: {exc}"))
                    continue
                except BaseException:
                    # Anything else ends the worker: nobody waits forever, `alive` turns false.
                    for job in jobs:
                        if not job.done.done():
                            job.done.set_exception(EngineDead("the transformers worker died"))
                    raise
                for job, answer in zip(group, answers, strict=True):
                    job.done.set_result(answer)

    # --- model work (worker thread) ------------------------------------------------------------
    def _padded(self, seqs: list[list[int]]) -> tuple[Any, Any, Any, int]:
        """(input ids, attention mask, KV cache of the shared prefix or None, its length).

        Without a shared prefix: left padding, every sequence ends at the last column. With
        one: `[prefix][left padding][own tokens]`, the prefix's KV repeated over the batch."""
        # lazy: torch only in a scorer that runs this engine
        import torch

        prefix, cache = self._shared_prefix(seqs)
        shared = len(prefix)
        own = [seq[shared:] for seq in seqs]
        width = max(map(len, own))
        input_ids = torch.full((len(seqs), shared + width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), shared + width), dtype=torch.long)
        input_ids[:, :shared] = torch.tensor(prefix, dtype=torch.long)
        mask[:, :shared] = 1
        for row, seq in enumerate(own):
            input_ids[row, shared + width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, shared + width - len(seq) :] = 1
        if cache is not None:
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(seqs))
        device = self._model.device
        return input_ids.to(device), mask.to(device), cache, shared

    def _shared_prefix(self, seqs: list[list[int]]) -> tuple[list[int], Any]:
        """The prefix every sequence shares (each keeps a token of its own) and its KV cache:
        a known one if they all start with it, else this batch's common prefix, prefilled and
        remembered (the newest `KNOWN_PREFIXES`: templates times policy packs in use)."""
        # lazy: torch only in a scorer that runs this engine
        import torch

        if not self._share_prefix:
            return [], None
        for index, (known, cache) in enumerate(self._prefixes):
            if all(len(seq) > len(known) and seq[: len(known)] == known for seq in seqs):
                self._prefixes.insert(0, self._prefixes.pop(index))
                return known, cache
        if len(seqs) < 2:
            return [], None
        common = _common_prefix(seqs)[: min(map(len, seqs)) - 1]
        if len(common) < MIN_SHARED_PREFIX:
            return [], None
        with torch.no_grad():
            ids = torch.tensor([common], dtype=torch.long, device=self._model.device)
            cache = self._model(input_ids=ids, use_cache=True).past_key_values
        self._prefixes = [(common, cache), *self._prefixes[: KNOWN_PREFIXES - 1]]
        return common, cache

    def _last_logprobs(self, seqs: list[list[int]]) -> Any:
        """log-softmax of the next-token logits after each sequence, one forward pass."""
        # lazy: torch only in a scorer that runs this engine
        import torch

        input_ids, mask, cache, shared = self._padded(seqs)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = self._model(
                input_ids=input_ids[:, shared:],
                attention_mask=mask,
                position_ids=positions[:, shared:],
                past_key_values=cache,
                use_cache=cache is not None,
                logits_to_keep=1,
            )
        return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()

    def _greedy(self, seqs: list[list[int]], max_new: int) -> tuple[list[list[int]], Any]:
        """Greedy continuations (without padding and end of turn) and the per-step scores."""
        # lazy: torch only in a scorer that runs this engine
        import torch

        input_ids, mask, cache, _ = self._padded(seqs)
        with torch.no_grad():
            out = self._model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                past_key_values=cache,  # generate computes only what the cache lacks
                max_new_tokens=max(1, max_new),
                do_sample=False,
                pad_token_id=self._pad,
                eos_token_id=self._eos,
                output_scores=True,
                return_dict_in_generate=True,
            )
        new = out.sequences[:, input_ids.shape[1] :].cpu().tolist()
        cut = []
        for row in new:
            tokens = []
            for token in row:
                if token in (self._eos, self._pad):
                    break
                tokens.append(token)
            cut.append(tokens)
        return cut, out.scores

    def _label_logprobs(self, at: Any) -> dict[Label, float | None]:
        return {label: float(at[tid]) for label, tid in self._forced.label_token.items()}

    def _decode(self, tokens: list[int]) -> str:
        return str(self._tok.decode(tokens, skip_special_tokens=True))

    def _plain_batch(self, jobs: list[_Job]) -> list[RawAnswer]:
        # lazy: torch only in a scorer that runs this engine
        import torch

        outputs, scores = self._greedy([job.ids for job in jobs], self._max_output)
        answers = []
        for row, (job, tokens) in enumerate(zip(jobs, outputs, strict=True)):
            logprobs: dict[Label, float | None] = {}
            for step, token in enumerate(tokens):
                if token in self._by_token:
                    at = torch.log_softmax(scores[step][row].float(), dim=-1).cpu()
                    logprobs = self._label_logprobs(at)
                    break
            answers.append(
                RawAnswer(
                    text=self._decode(tokens),
                    label_logprobs=logprobs,
                    prompt_tokens=len(job.ids),
                    output_tokens=len(tokens),
                    truncated=job.truncated,
                )
            )
        return answers

    def _two_phase_batch(self, jobs: list[_Job]) -> list[RawAnswer]:
        at = self._last_logprobs([job.ids + self._forced.safety for job in jobs])
        answers: list[RawAnswer] = []
        detail: list[tuple[int, list[int], str]] = []  # (index, forced ids, forced text)
        for index, job in enumerate(jobs):
            token = int(at[index].argmax())
            label = self._by_token.get(token)
            answers.append(
                RawAnswer(
                    text=SAFETY_PREFIX + self._decode([token]),  # not a label: unusable
                    label_logprobs=self._label_logprobs(at[index]),
                    prompt_tokens=len(job.ids),
                    output_tokens=1,
                    truncated=job.truncated,
                )
            )
            if label is None:
                continue
            if label == "Safe" and not (self._refusal and is_response(job.messages)):
                answers[index] = _with(answers[index], SAFE_ANSWER)
            elif label == "Safe":
                detail.append((index, self._forced.safe_response, SAFE_RESPONSE_PREFIX))
            else:
                text = f"{SAFETY_PREFIX} {label}\n"
                detail.append((index, self._forced.detail[label], text))
        if detail:
            seqs = [jobs[i].ids + forced for i, forced, _ in detail]
            outputs, _ = self._greedy(seqs, self._detail_max)
            for (index, _, text), tokens in zip(detail, outputs, strict=True):
                answers[index] = _with(
                    answers[index], text + self._decode(tokens), second=len(tokens)
                )
        return answers


def _load(path: str, dtype_name: str) -> tuple[Any, Any]:
    """The model (in eval mode, on the GPU when there is one) and its tokenizer."""
    # lazy: torch only in a scorer that runs this engine
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = "auto" if dtype_name == "auto" else getattr(torch, _DTYPES[dtype_name])
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest prefix of all `seqs`: the one the lexicographically first and last share."""
    first, last = min(seqs), max(seqs)
    shared = 0
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        shared += 1
    return first[:shared]


def _with(answer: RawAnswer, text: str, second: int | None = None) -> RawAnswer:
    """The answer with its final text; `second`: tokens the detail generation produced."""
    if second is None:
        return replace(answer, text=text)
    return replace(answer, text=text, output_tokens=answer.output_tokens + second, requests=2)


_DTYPES = {
    "half": "float16",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float": "float32",
    "float32": "float32",
}
