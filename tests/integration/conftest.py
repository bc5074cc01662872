"""Integration fixtures: the vLLM engine (one per session: it takes ~25 s to start) and the
processes run in the test's own event loop through their real entry points."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from guardstream.scorer import main as scorer_main
from guardstream.scorer.engine import GuardEngine
from guardstream.scorer.service import Scorer
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.triage import main as triage_main
from guardstream.triage.service import Triage

MAX_MODEL_LEN = 2048  # the `settings` fixture's window; the shared engine must match it


@pytest.fixture(scope="session")
async def engine(model_cache_dir: Path) -> AsyncIterator[VllmGuardEngine]:
    settings = Settings(
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": MAX_MODEL_LEN},
    )
    eng = await VllmGuardEngine.start(settings)
    yield eng
    await eng.close()


@dataclass
class Pipeline:
    settings: Settings
    handlers: dict[str, Triage | Scorer] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    processes: tuple[str, ...] = ()

    @property
    def triage(self) -> Triage:
        return self.handlers["triage"]  # type: ignore[return-value]

    @property
    def scorer(self) -> Scorer:
        return self.handlers["scorer"]  # type: ignore[return-value]

    async def serving_generation(self, generation: int, timeout_s: float = 60) -> None:
        """Wait until every running process serves adapter registry `generation` (or a later
        one): what a promotion written at that generation needs before traffic can show it."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            seen = {
                name: h.adapter_generation if (h := self.handlers.get(name)) else None
                for name in self.processes
            }
            if seen and all(g is not None and g >= generation for g in seen.values()):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"adapter registry generation {generation} not taken within {timeout_s} s "
                    f"(each process serves: {seen})"
                )
            await asyncio.sleep(0.05)


@asynccontextmanager
async def in_process(
    settings: Settings, engine: GuardEngine, *processes: str
) -> AsyncIterator[Pipeline]:
    """Run the named processes (triage, scorer) as tasks until the block ends."""
    assert settings.engine.max_model_len == MAX_MODEL_LEN
    await ensure_topics(settings)
    state = Pipeline(settings, processes=processes)
    stop = asyncio.Event()
    state.stop = stop

    def keep(name: str) -> Callable[[Triage | Scorer], None]:
        return lambda handler: state.handlers.__setitem__(name, handler)

    tasks = []
    if "triage" in processes:
        tasks.append(asyncio.create_task(triage_main.run(settings, stop, expose=keep("triage"))))
    if "scorer" in processes:
        tasks.append(
            asyncio.create_task(
                scorer_main.run(settings, stop, engine=engine, expose=keep("scorer"))
            )
        )
    try:
        yield state
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)


@pytest.fixture
async def pipeline(settings: Settings, engine: VllmGuardEngine) -> AsyncIterator[Pipeline]:
    async with in_process(settings, engine, "triage", "scorer") as state:
        yield state
