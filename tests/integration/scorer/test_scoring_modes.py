"""Two-phase scoring against plain generation on the real vLLM engine and tiny checkpoint.

The tiny checkpoint was taught Qwen3Guard's exact answers for its lessons; both modes must give
the taught label (and two-phase the taught categories and refusal), two-phase must stop after
one request for a safe prompt, and anything but a label token after `Safety:` is unusable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from guardstream.model.tiny import TEACHING_SET, Lesson, ensure_tiny_checkpoint
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import (
    INTERACTIVE,
    STREAM,
    EngineDead,
    ScoringError,
    engine_priority,
    max_input_tokens,
)
from guardstream.scorer.output import label_confidence, parse_answer
from guardstream.scorer.prompt import PromptRenderer
from guardstream.scorer.vllm_engine import VllmGuardEngine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def lesson_id(lesson: Lesson) -> str:
    return lesson.messages[-1][1][:40]


@pytest.mark.parametrize("lesson", TEACHING_SET, ids=lesson_id)
async def test_both_modes_give_the_taught_verdict(engine: VllmGuardEngine, lesson: Lesson) -> None:
    taught = parse_answer(lesson.target)
    plain = await engine.assess_plain(lesson.chat(), "plain")
    two = await engine.assess_two_phase(lesson.chat(), "two")
    plain_answer, two_answer = parse_answer(plain.text), parse_answer(two.text)

    assert plain_answer.label == two_answer.label == taught.label
    assert two_answer.categories == taught.categories
    assert plain_answer.refusal == two_answer.refusal == taught.refusal
    assert plain.text == two.text == lesson.target
    # A safe prompt is decided by one prefill; a safe response has its refusal read from the
    # cached prefix; everything else has its details generated after the forced label.
    safe_prompt = taught.label == "Safe" and lesson.messages[-1][0] == "user"
    assert two.requests == (1 if safe_prompt else 2)
    assert two.output_tokens < plain.output_tokens
    # Both read the label's probability at the same position of the same prompt.
    assert taught.label is not None
    two_conf = label_confidence(taught.label, two.label_logprobs)
    plain_conf = label_confidence(taught.label, plain.label_logprobs)
    assert two_conf is not None and plain_conf is not None
    assert two_conf > 0.5
    assert two_conf == pytest.approx(plain_conf, abs=0.02)


# --- the two-phase logic around answers a real model will not give on demand ---------------


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Any]] | None = None


@dataclass
class _Output:
    outputs: list[_Completion]


@dataclass
class ScriptedLLM:
    """Stands in for AsyncLLM where the tiny model cannot be made to misbehave: each request
    gets the next scripted completion (or raises the scripted exception)."""

    script: list[_Completion | BaseException]
    prompts: list[list[int]] = field(default_factory=list)
    loras: list[Any] = field(default_factory=list)
    errored: bool = False
    priorities: list[int] = field(default_factory=list)

    async def generate(
        self,
        prompt: Any,
        params: Any,
        request_id: str,
        lora_request: Any = None,
        priority: int = 0,
    ) -> AsyncIterator[_Output]:
        self.prompts.append(list(prompt["prompt_token_ids"]))
        self.loras.append(lora_request)
        self.priorities.append(priority)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        yield _Output([step])


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_tiny_checkpoint(model_cache_dir))


def scripted(tokenizer: Any, script: Sequence[_Completion | BaseException]) -> Any:
    settings = Settings(model={"name": "tiny"}, engine={"max_model_len": 2048})
    renderer = PromptRenderer(tokenizer, max_input_tokens(settings, tokenizer))
    llm = ScriptedLLM(list(script))
    return VllmGuardEngine(llm, tokenizer, renderer, "scripted", settings), llm


CHAT = [{"role": "user", "content": "hello"}]


async def test_a_non_label_token_after_safety_is_unusable(tokenizer: Any) -> None:
    other = tokenizer.encode(" hello", add_special_tokens=False)[0]
    engine, llm = scripted(tokenizer, [_Completion(" hello", [other], [{other: None}])])
    raw = await engine.assess_two_phase(CHAT, "r")
    answer = parse_answer(raw.text)
    assert answer.label is None and answer.verdict.value == "controversial"
    assert raw.requests == 1 and len(llm.prompts) == 1


async def test_second_phase_continues_from_the_forced_label(tokenizer: Any) -> None:
    unsafe = tokenizer.encode(" Unsafe", add_special_tokens=False)[0]
    detail = _Completion("Categories: Violent", [1, 2, 3])
    label = _Completion(" Unsafe", [unsafe], None)
    engine, llm = scripted(tokenizer, [label, detail, label, detail])
    raw = await engine.assess_two_phase(CHAT, "r")
    assert raw.text == "Safety: Unsafe\nCategories: Violent"
    first, second = llm.prompts[:2]
    safety = tokenizer.encode("Safety:", add_special_tokens=False)
    forced = tokenizer.encode("Safety: Unsafe\n", add_special_tokens=False)
    # Same conversation, the forced label in place of the bare prefix: the prefix is cached.
    assert first[-len(safety) :] == safety
    assert second[: len(first) - len(safety)] == first[: -len(safety)]
    assert second[-len(forced) :] == forced
    # Both phases go to vLLM with the caller's priority: the stream's here, the interactive
    # door's where it set its own (the API's callers ahead of the Kafka backlog).
    assert llm.priorities == [STREAM, STREAM]
    token = engine_priority.set(INTERACTIVE)
    try:
        await engine.assess_two_phase(CHAT, "r2")
    finally:
        engine_priority.reset(token)
    assert llm.priorities[2:] == [INTERACTIVE, INTERACTIVE]


async def test_engine_failures_carry_their_policy(tokenizer: Any) -> None:
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    engine, llm = scripted(tokenizer, [EngineGenerateError("bad request"), EngineDeadError()])
    with pytest.raises(ScoringError) as failed:
        await engine.assess_two_phase(CHAT, "r")
    assert failed.value.retriable
    with pytest.raises(EngineDead) as dead:
        await engine.assess_two_phase(CHAT, "r")
    assert not dead.value.retriable
    assert engine.alive
    llm.errored = True
    assert not engine.alive
    with pytest.raises(EngineDead):
        await engine.assess_plain(CHAT, "r")


async def test_without_the_refusal_probe_a_safe_response_takes_one_request(
    model_cache_dir: Path, tokenizer: Any
) -> None:
    safe = tokenizer.encode(" Safe", add_special_tokens=False)[0]
    settings = Settings(
        model={"name": "tiny"}, engine={"max_model_len": 2048, "two_phase_refusal": False}
    )
    renderer = PromptRenderer(tokenizer, max_input_tokens(settings, tokenizer))
    llm = ScriptedLLM([_Completion(" Safe", [safe], None)])
    engine = VllmGuardEngine(llm, tokenizer, renderer, "scripted", settings)
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    raw = await engine.assess_two_phase(chat, "r")
    assert parse_answer(raw.text).refusal is None
    assert raw.requests == 1 and len(llm.prompts) == 1


async def test_each_adapter_keeps_one_lora_id_and_none_is_served_without_a_registry(
    tokenizer: Any, tmp_path: Path
) -> None:
    from guardstream.model.adapters import Adapter

    safe = tokenizer.encode(" Safe", add_special_tokens=False)[0]
    one = Adapter("fb-1", tmp_path / "a", "*", "t")
    two = Adapter("fb-2", tmp_path / "b", "*", "t")
    chat = [{"role": "user", "content": "q"}]
    for adapter_dir, expect_error in ((None, True), (tmp_path, False)):
        settings = Settings(
            model={"name": "tiny", "adapter_dir": adapter_dir}, engine={"max_model_len": 2048}
        )
        renderer = PromptRenderer(tokenizer, max_input_tokens(settings, tokenizer))
        llm = ScriptedLLM([_Completion(" Safe", [safe], None) for _ in range(4)])
        engine = VllmGuardEngine(llm, tokenizer, renderer, "scripted", settings)
        if expect_error:
            with pytest.raises(ScoringError, match="no adapter registry"):
                await engine.assess_two_phase(chat, "r", one)
            continue
        for adapter in (one, two, one, None):
            await engine.assess_two_phase(chat, "r", adapter)
        ids = [(r.lora_name, r.lora_int_id) if r else None for r in llm.loras]
        assert ids == [("fb-1", 1), ("fb-2", 2), ("fb-1", 1), None]
