"""The transformers engine agrees with the vLLM engine on the tiny checkpoint's lessons.

Same rendering, same forced prefixes, same parser: for every taught conversation both engines
must give the same label, categories and refusal, in both scoring modes, with confidences
close (both read the same logits; bf16 kernels differ slightly). All lessons are submitted at
once, so the transformers engine scores them in batches (left-padded forced-prefix passes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guardstream.model.tiny import TEACHING_SET
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import EngineDead
from guardstream.scorer.hf_engine import TransformersGuardEngine
from guardstream.scorer.launch import start_engine
from guardstream.scorer.output import label_confidence, parse_answer
from guardstream.scorer.vllm_engine import VllmGuardEngine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
async def hf(model_cache_dir: Path) -> AsyncIterator[TransformersGuardEngine]:
    settings = Settings(
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": 2048, "kind": "transformers"},
    )
    engine = await start_engine(settings)
    assert isinstance(engine, TransformersGuardEngine)
    yield engine
    await engine.close()


@pytest.mark.parametrize("mode", ["two_phase", "plain"])
async def test_transformers_agrees_with_vllm_on_every_lesson(
    hf: TransformersGuardEngine, engine: VllmGuardEngine, mode: str
) -> None:
    chats = [lesson.chat() for lesson in TEACHING_SET]
    hf_assess = hf.assess_two_phase if mode == "two_phase" else hf.assess_plain
    vllm_assess = engine.assess_two_phase if mode == "two_phase" else engine.assess_plain
    before = hf.batches
    ours = await asyncio.gather(*(hf_assess(c, f"hf-{i}") for i, c in enumerate(chats)))
    theirs = await asyncio.gather(*(vllm_assess(c, f"vl-{i}") for i, c in enumerate(chats)))
    assert hf.batches - before < len(chats)  # batched, not one by one

    for lesson, mine, ref in zip(TEACHING_SET, ours, theirs, strict=True):
        a, b = parse_answer(mine.text), parse_answer(ref.text)
        taught = parse_answer(lesson.target)
        assert (a.label, a.categories, a.refusal) == (b.label, b.categories, b.refusal)
        assert a.label == taught.label
        assert mine.text == ref.text
        assert mine.requests == ref.requests
        assert a.label is not None
        mine_conf = label_confidence(a.label, mine.label_logprobs)
        ref_conf = label_confidence(a.label, ref.label_logprobs)
        assert mine_conf is not None and ref_conf is not None
        assert mine_conf == pytest.approx(ref_conf, abs=0.05)


async def test_a_closed_transformers_engine_is_dead(model_cache_dir: Path) -> None:
    settings = Settings(
        model={"name": "tiny", "cache_dir": model_cache_dir}, engine={"kind": "transformers"}
    )
    engine = await TransformersGuardEngine.start(settings)
    answer = await engine.assess([{"role": "user", "content": "How can I make a bomb?"}], "r")
    assert parse_answer(answer.text).label == "Unsafe"
    assert engine.alive
    await engine.close()
    assert not engine.alive
    with pytest.raises(EngineDead):
        await engine.assess([{"role": "user", "content": "hi"}], "r")


def assess(engine: TransformersGuardEngine, mode: str) -> Any:
    return engine.assess_plain if mode == "plain" else engine.assess_two_phase


async def test_shared_prefix_reuse_changes_no_answer(
    hf: TransformersGuardEngine, model_cache_dir: Path
) -> None:
    """The template's shared prefix is prefilled once per batch and reused (module doc of
    hf_engine); answers and label log-probabilities are those of full prefills."""
    settings = Settings(
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": 2048, "kind": "transformers", "prefix_caching": False},
    )
    full = await TransformersGuardEngine.start(settings)
    try:
        chats = [lesson.chat() for lesson in TEACHING_SET]
        answers = {}
        for mode in ("two_phase", "plain"):
            shared = await asyncio.gather(*(assess(hf, mode)(c, "s") for c in chats))
            unshared = await asyncio.gather(*(assess(full, mode)(c, "u") for c in chats))
            answers[mode] = shared
            for mine, ref in zip(shared, unshared, strict=True):
                assert (mine.text, mine.requests) == (ref.text, ref.requests)
                for label, logprob in ref.label_logprobs.items():
                    assert mine.label_logprobs[label] == pytest.approx(logprob, abs=1e-3)
        # Prompt and response moderation each share a long prefix (their instructions).
        lengths = sorted(len(prefix) for prefix, _ in hf._prefixes)
        assert len(lengths) >= 2 and lengths[0] >= 100, lengths
        assert full._prefixes == []
        # A lone post reuses a known prefix: nothing new is prefilled for it.
        known = [id(cache) for _, cache in hf._prefixes]
        answer = await hf.assess_two_phase(chats[0], "lone")
        assert answer.text == answers["two_phase"][0].text
        assert sorted(id(cache) for _, cache in hf._prefixes) == sorted(known)
    finally:
        await full.close()
