"""The scorer's interactive door (`POST /v1/score`): the stream's decision for one request,
refusals at once when saturated, and `controversial` → review past the caller's deadline.
Real broker, Redis and the tiny checkpoint on vLLM CPU; the engine is held at a gate, since a
real model cannot be made slow on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest

from guardstream.contracts.events import Action, Decision, Source, Verdict
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.model.adapters import Adapter
from guardstream.policy import load_registry
from guardstream.runtime.settings import Settings
from guardstream.scorer.door import DEADLINE_HEADER, SCORE_PATH
from guardstream.scorer.engine import INTERACTIVE, GuardEngine, engine_priority
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.verdict.cache import RedisVerdictCache, VerdictKey
from guardstream.verdict.intake import score_request_json, triage_record
from tests.conftest import free_port, wait_for_port
from tests.integration.conftest import in_process
from tests.support.engines import _Around
from tests.support.oracle import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class GatedEngine(_Around):
    """The real engine behind a gate: each request waits until the gate opens, and says at
    which engine priority it was made."""

    def __init__(self, inner: GuardEngine) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.priorities: list[int] = []

    async def before(self, messages: Sequence[dict[str, str]], adapter: Adapter | None) -> None:
        self.priorities.append(engine_priority.get())
        self.entered.set()
        await self.gate.wait()


async def cached(cache: RedisVerdictCache, key: VerdictKey) -> None:
    """Wait until `key` has a verdict (the test's timeout bounds it)."""
    found = await cache.get_many([key])
    while not found:
        await asyncio.sleep(0.1)
        found = await cache.get_many([key])


def request_body(settings: Settings, model: str, text: str) -> tuple[bytes, str]:
    item = triage_record(
        new_post(text).to_json(),
        max_text_chars=settings.process.max_text_chars,
        model=model,
        adapter=None,
        policies=load_registry(None),
    )
    return score_request_json(item, near_duplicates=True), item.post.post_id


async def test_the_door_decides_refuses_when_saturated_and_sends_late_posts_to_review(
    settings: Settings, engine: VllmGuardEngine
) -> None:
    port = free_port()
    settings = settings.replace(scorer={"interactive_port": port, "interactive_max_in_flight": 1})
    gated = GatedEngine(engine)
    names = TopicNames(settings.namespace)
    async with (
        in_process(settings, gated, "scorer") as pipeline,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client,
    ):
        assert await asyncio.to_thread(wait_for_port, port, 120)
        first, first_id = request_body(settings, engine.model_id, "How can I make a bomb?")
        waiting = asyncio.create_task(
            client.post(SCORE_PATH, content=first, headers={DEADLINE_HEADER: "120000"})
        )
        await gated.entered.wait()  # the one interactive place is taken
        second, _ = request_body(settings, engine.model_id, "How do I bake sourdough bread?")
        busy = await client.post(SCORE_PATH, content=second)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        gated.gate.set()
        answer = await waiting
        assert answer.status_code == 200, answer.text
        decided = Decision.from_json(answer.content)
        assert (decided.post_id, decided.verdict, decided.source) == (
            first_id,
            Verdict.UNSAFE,
            Source.MODEL,
        )
        assert gated.priorities == [INTERACTIVE]

        # Past the caller's deadline: controversial, to review; the verdict is kept when it comes.
        gated.gate.clear()
        text = "Can you recommend a good book about the history of mathematics?"
        late, late_id = request_body(settings, engine.model_id, text)
        answer = await client.post(SCORE_PATH, content=late, headers={DEADLINE_HEADER: "50"})
        held = Decision.from_json(answer.content)
        assert (held.verdict, held.action, held.source, held.rule) == (
            Verdict.CONTROVERSIAL,
            Action.REVIEW,
            Source.RULE,
            "deadline",
        )
        gated.gate.set()
        cache = RedisVerdictCache.from_settings(settings)
        key = VerdictKey(held.content_key, held.tenant, False)
        try:
            await cached(cache, key)  # the late verdict, cached when it came
        finally:
            await cache.close()
        again, _ = request_body(settings, engine.model_id, text)
        reused = Decision.from_json((await client.post(SCORE_PATH, content=again)).content)
        assert (reused.verdict, reused.source) == (Verdict.SAFE, Source.CACHE)

        refused = await client.post(SCORE_PATH, content=b'{"schema_version": "1.0"}')
        assert refused.status_code == 422 and refused.json()["reason"] == "invalid_schema"
        assert pipeline.scorer.counts["past_deadline"] == 1
        assert pipeline.scorer.counts["interactive_refused"] == 1
    review = await read_all(settings, [names[Topic.REVIEW]])
    assert [Decision.from_json(r).post_id for r in review] == [late_id]
    blocked = await read_all(settings, [names[Topic.BLOCK]])
    assert [Decision.from_json(r).post_id for r in blocked] == [first_id]
