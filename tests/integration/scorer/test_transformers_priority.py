"""The transformers engine honours the engine priority as vLLM's does (issue 20): its queue
hands the next batch to interactive requests (the API's) before stream requests (Kafka's)
that were waiting longer. Real engine on the tiny checkpoint, one post per batch so the order
of batches is the order of answers; the first batch (a long text generated in plain mode)
keeps the worker busy while the others queue up behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import INTERACTIVE, STREAM, RawAnswer, engine_priority
from guardstream.scorer.hf_engine import TransformersGuardEngine
from guardstream.scorer.launch import start_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
async def hf(model_cache_dir: Path) -> AsyncIterator[TransformersGuardEngine]:
    settings = Settings(
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": 2048, "kind": "transformers"},
        scorer={"batch_max": 1},
    )
    engine = await start_engine(settings)
    assert isinstance(engine, TransformersGuardEngine)
    yield engine
    await engine.close()


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def at(priority: int, hf: TransformersGuardEngine, text: str, order: list[str]) -> RawAnswer:
    engine_priority.set(priority)  # this task's context only
    answer = await hf.assess_plain(chat(text), text)  # one engine job per request
    order.append(text)
    return answer


async def test_interactive_requests_get_the_next_batch_before_waiting_stream_requests(
    hf: TransformersGuardEngine,
) -> None:
    order: list[str] = []
    long = " ".join(["the river runs past the old mill and the garden"] * 150)
    first = asyncio.create_task(hf.assess_plain(chat(long), "long"))
    while hf.batches < 1:  # noqa: ASYNC110 (the long request holds the worker)
        await asyncio.sleep(0.001)
    stream = [
        asyncio.create_task(at(STREAM, hf, f"stream post number {i} about gardens", order))
        for i in range(3)
    ]
    while hf._queue.qsize() < len(stream):  # noqa: ASYNC110 (queued behind it)
        await asyncio.sleep(0.001)
    interactive = asyncio.create_task(at(INTERACTIVE, hf, "an interactive question", order))
    while hf._queue.qsize() < len(stream) + 1:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    # All queued while the first batch still runs: the order is the queue's, not arrival luck.
    assert hf.batches == 1 and not first.done(), "the first batch ended before the queue filled"
    await asyncio.gather(first, interactive, *stream)
    assert order[0] == "an interactive question", order
    assert order[1:] == [f"stream post number {i} about gardens" for i in range(3)]  # FIFO
    assert engine_priority.get() == STREAM  # the test's own context untouched
