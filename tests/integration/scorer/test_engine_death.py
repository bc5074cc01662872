"""Engine death, caused for real: the vLLM engine-core process of a live engine is SIGKILLed.

The scorer must report it on `/healthz` at once (no traffic needed), and the first batch that
meets the dead engine must stop the consumer with nothing committed past the undecided work.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from guardstream.scorer import main as scorer_main
from guardstream.scorer.engine import EngineDead
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.triage import main as triage_main
from tests.conftest import free_port
from tests.integration.pipeline.test_reliability import produce
from tests.support.oracle import committed_offsets, read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def healthz(port: int) -> int | None:
    """HTTP status of /healthz, None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


async def health_becomes(port: int, status: int, timeout_s: float = 60) -> None:
    """Poll /healthz from a thread: the server answers from this test's event loop."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (got := await asyncio.to_thread(healthz, port)) != status:
        assert asyncio.get_running_loop().time() < deadline, f"/healthz stayed {got}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def doomed(model_cache_dir: Path) -> AsyncIterator[tuple[VllmGuardEngine, list[int]]]:
    """A real engine of its own (the session's must survive) and its engine-core pids."""
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    settings = Settings(
        model={"name": "tiny", "cache_dir": model_cache_dir}, engine={"max_model_len": 2048}
    )
    engine = await VllmGuardEngine.start(settings)
    new = [c for c in me.children(recursive=False) if c.pid not in before]
    cores = [c.pid for c in new if "EngineCore" in " ".join([c.name(), *c.cmdline()])]
    yield engine, cores or [c.pid for c in new]
    await engine.close()


async def test_engine_death_fails_health_and_stops_the_scorer(
    settings: Settings, doomed: tuple[VllmGuardEngine, list[int]]
) -> None:
    engine, cores = doomed
    assert cores
    cfg = settings.replace(process={"health_port": free_port()})
    await ensure_topics(cfg)
    stop = asyncio.Event()
    scorer = asyncio.create_task(scorer_main.run(cfg, stop, engine=engine))
    triage = asyncio.create_task(triage_main.run(settings, stop))  # no health port
    try:
        await health_becomes(cfg.process.health_port, 200)
        raw = await engine.assess_two_phase([{"role": "user", "content": "hello"}], "before")
        assert raw.text.startswith("Safety:")

        for pid in cores:
            os.kill(pid, signal.SIGKILL)
        # Liveness fails without any traffic: the engine noticed its core is gone.
        await health_becomes(cfg.process.health_port, 503)
        assert not engine.alive

        # Unique texts: cache misses, so they reach the dead engine through score requests.
        posts = [new_post(f"How can I make a bomb? #{i}", tenant="acme") for i in range(6)]
        await produce(cfg, [(p.post_id.encode(), p.to_json()) for p in posts])
        with pytest.raises(EngineDead):
            await asyncio.wait_for(scorer, timeout=120)
    finally:
        stop.set()
        outcomes = await asyncio.wait_for(
            asyncio.gather(scorer, triage, return_exceptions=True), 60
        )
    assert not isinstance(outcomes[1], BaseException), outcomes[1]

    names = TopicNames(cfg.namespace)
    requests = await read_all(cfg, [names[Topic.SCORE_REQUESTS]])
    assert requests, "triage should have asked the scorer"
    # Nothing was decided, so nothing may be committed: a restarted scorer re-reads it all.
    committed = await committed_offsets(cfg, cfg.group_id("scorer"), names[Topic.SCORE_REQUESTS])
    assert set(committed.values()) <= {None, 0}, committed
    decided = await read_all(cfg, [names[t] for t in (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)])
    assert decided == []
