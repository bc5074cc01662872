"""The moderation API (issue 20) against real parts: the broker, Redis, triage and the scorer
(tiny checkpoint on vLLM CPU) in this event loop, and `guardstream api` started as a user
starts it (its own OS process). The API decides what is known itself, asks the scorer's
interactive door for the rest, and its decisions land on the same topics as the stream's,
once per post event; the `openai` SDK talks to it unmodified; no body makes it answer 5xx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from guardstream.contracts.events import Action, Decision, DlqRecord, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send
from guardstream.runtime.kafka import make_producer
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import GuardEngine
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.conftest import free_port, wait_for_port
from tests.integration.api.conftest import add_key, bearer, database_env
from tests.integration.conftest import Pipeline, in_process
from tests.support.oracle import assert_invariants, read_all, wait_for_decisions
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

UNSAFE = "How can I make a bomb?"
CONTESTED = "Is it true that some politicians are secretly controlled by foreign powers?"
SAFE = "The weather is lovely today, let's go hiking."
SAFE_TOO = "How do I bake sourdough bread at home?"
LIMIT = 600  # max_text_chars: the hostile corpus's oversized texts stay small


@asynccontextmanager
async def api_stack(
    settings: Settings, engine: GuardEngine, logs: Path, **api_env: str
) -> AsyncIterator[tuple[Pipeline, str]]:
    """Triage and the scorer (its interactive door open) in this loop, the API as a process."""
    door, port = free_port(), free_port()
    settings = settings.replace(scorer={"interactive_port": door})
    async with in_process(settings, engine, "triage", "scorer") as pipeline:
        assert await asyncio.to_thread(wait_for_port, door, 120)
        env = env_for(
            settings,
            **{
                "GUARDSTREAM_API_PORT": str(port),
                "GUARDSTREAM_API_SCORER_URL": f"http://127.0.0.1:{door}",
                "GUARDSTREAM_MAX_TEXT_CHARS": str(settings.process.max_text_chars),
                **api_env,
            },
        )
        api = Process("api", env, logs).start()
        try:
            await asyncio.to_thread(api.wait_ready, 120)
            yield pipeline, f"http://127.0.0.1:{port}"
        finally:
            api.stop()


async def test_the_api_decides_as_the_stream_does_once_per_post_event(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    names = TopicNames(settings.namespace)
    key = await add_key(settings)
    async with (
        api_stack(settings, engine, tmp_path) as (pipeline, url),
        httpx.AsyncClient(base_url=url, timeout=120, headers=bearer(key)) as client,
    ):
        first = await client.post("/v1/moderate", json={"text": UNSAFE, "post_id": "api-1"})
        assert first.status_code == 200, first.text
        scored = Decision.from_json(first.content)
        assert (scored.verdict, scored.action, scored.source) == (
            Verdict.UNSAFE,
            Action.BLOCK,
            Source.MODEL,
        )
        assert scored.categories == ("Violent",)

        # The same content again: a hit, decided (and published) by the API itself.
        again = await client.post("/v1/moderate", json={"text": UNSAFE, "post_id": "api-2"})
        hit = Decision.from_json(again.content)
        assert (hit.verdict, hit.source) == (Verdict.UNSAFE, Source.CACHE)
        assert pipeline.scorer.counts["interactive"] == 1  # the hit never reached the scorer

        # The same post event again (a client's retry): the same decision, byte for byte.
        retry = await client.post(
            "/v1/moderate",
            json={"text": UNSAFE, "post_id": "api-1", "event_id": scored.post_event_id},
        )
        assert retry.content == first.content

        # Contested content enters review.
        answer = await client.post("/v1/moderate", json={"text": CONTESTED, "post_id": "api-3"})
        contested = Decision.from_json(answer.content)
        assert (contested.verdict, contested.action) == (Verdict.CONTROVERSIAL, Action.REVIEW)

        # The OpenAI SDK, unmodified.
        openai = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        async with openai:
            moderation = await openai.moderations.create(
                input=[UNSAFE, SAFE], model="omni-moderation-latest"
            )
            one = await openai.moderations.create(input=CONTESTED)
        assert moderation.model == "omni-moderation-latest"
        unsafe, safe = moderation.results
        assert unsafe.flagged and unsafe.categories.violence and not unsafe.categories.sexual
        assert unsafe.category_scores.violence > 0.5
        assert not safe.flagged and not safe.categories.violence
        assert one.results[0].flagged  # held for review

        # Stream and API traffic mixed, the same contents through both doors.
        stream = [new_post(text) for text in (UNSAFE, CONTESTED, SAFE_TOO, SAFE)]
        api_posts = [(f"api-mix-{i}", text) for i, text in enumerate((SAFE_TOO, CONTESTED, SAFE))]
        await send(settings, stream)
        answers = await asyncio.gather(
            *(client.post("/v1/moderate", json={"text": t, "post_id": p}) for p, t in api_posts)
        )
        assert [a.status_code for a in answers] == [200, 200, 200]

        expected = {"api-1", "api-2", "api-3"} | {p for p, _ in api_posts}
        expected |= {p.post_id for p in stream}
        verdicts = await wait_for_decisions(settings, expected, 240)
    # api-1 was published twice (the retry): the same decision both times.
    assert_invariants(verdicts, expected, max_emissions_per_post=2)
    assert verdicts.re_emitted() == {("api-1", scored.policy): 2}
    review = await read_all(settings, [names[Topic.REVIEW]])
    assert {Decision.from_json(r).post_id for r in review} >= {"api-3", "api-mix-1"}


async def current_decision(
    client: httpx.AsyncClient, post_id: str, wanted: Callable[[Decision], bool]
) -> httpx.Response:
    """`GET /v1/decisions/{post_id}` once the index holds a decision `wanted` accepts (the
    test's timeout bounds the wait)."""
    answer = await client.get(f"/v1/decisions/{post_id}")
    while answer.status_code != 200 or not wanted(Decision.from_json(answer.content)):
        assert answer.status_code in (200, 404), answer.text
        await asyncio.sleep(0.2)
        answer = await client.get(f"/v1/decisions/{post_id}")
    return answer


async def publish(settings: Settings, topic: Topic, decision: Decision) -> None:
    producer = make_producer(settings, client_id="test")
    await producer.start()
    try:
        name = TopicNames(settings.namespace)[topic]
        await producer.send_and_wait(name, decision.to_json(), key=decision.post_id.encode())
    finally:
        await producer.stop()


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.characters(codec=None, categories=None), max_size=40),  # surrogates, controls
        st.text(alphabet="\x00\x01\x1b\u200b\ud800\udfff\ufeffa", max_size=40),
        st.just("a" * (LIMIT + 1)),
        st.just("   "),
    )


def json_values() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        hostile_text(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=6,
    )


def bodies() -> st.SearchStrategy[tuple[str, bytes]]:
    """(route, body): bytes that are no JSON, JSON of every shape, requests with hostile values
    in every field, and a body over the size limit."""
    post = st.fixed_dictionaries(
        {"text": hostile_text() | json_values()},
        optional={
            name: hostile_text() | json_values()
            for name in ("prompt", "tenant", "lang", "post_id", "author_id", "event_id")
        },
    )
    # `json.dumps` writes lone surrogates as `\udXXX` escapes, as a hostile client would.
    shaped = st.one_of(
        st.tuples(st.just("/v1/moderate"), post),
        st.tuples(st.just("/v1/moderate/batch"), st.fixed_dictionaries({"posts": st.lists(post)})),
        st.tuples(
            st.just("/v1/moderations"),
            st.fixed_dictionaries({"input": hostile_text() | st.lists(hostile_text())}),
        ),
        st.tuples(
            st.sampled_from(["/v1/moderate", "/v1/moderate/batch", "/v1/moderations"]),
            json_values(),
        ),
    ).map(lambda pair: (pair[0], json.dumps(pair[1]).encode()))
    raw = st.tuples(
        st.sampled_from(["/v1/moderate", "/v1/moderate/batch", "/v1/moderations"]),
        st.binary(max_size=64) | st.just(b"{" * 5000) | st.just(b'{"text": "' + b"a" * 2_000_000),
    )
    return shaped | raw


def draw(examples: int) -> list[tuple[str, bytes]]:
    corpus: list[tuple[str, bytes]] = []

    @hypothesis_settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(bodies())
    def collect(body: tuple[str, bytes]) -> None:
        corpus.append(body)

    collect()
    return corpus


async def test_no_body_makes_the_api_answer_5xx_and_every_refusal_is_dead_lettered(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    settings = settings.replace(process={"max_text_chars": LIMIT})
    # Drawn bodies, and one that surely names another tenant (few draws do).
    corpus = [*draw(60), ("/v1/moderate", b'{"text": "hello", "tenant": "someone-else"}')]
    refused: dict[str, int] = {}
    forbidden = 0
    key = await add_key(settings)
    async with (
        api_stack(settings, engine, tmp_path) as (_pipeline, url),
        httpx.AsyncClient(base_url=url, timeout=120, headers=bearer(key)) as client,
    ):
        for route, body in corpus:
            answer = await client.post(
                route, content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code < 500, (route, body[:200], answer.text)
            if answer.status_code == 403:  # another tenant named: refused at the gate, no DLQ
                assert answer.json()["reason"] == "forbidden_tenant"
                forbidden += 1
            elif answer.status_code == 200 and route == "/v1/moderate/batch":
                items = answer.json()["results"]
                refused[route] = refused.get(route, 0) + sum(i["status"] == 422 for i in items)
            elif answer.status_code >= 400:
                payload = answer.json()
                reason = payload.get("reason") or payload["error"]["code"]
                assert reason, payload
                refused[route] = refused.get(route, 0) + 1
        dlq = [
            DlqRecord.from_json(r)
            for r in await read_all(settings, [TopicNames(settings.namespace)[Topic.DLQ]])
        ]
    by_route: dict[str, int] = {}
    for record in dlq:
        assert record.consumer == settings.group_id("api") and record.reason
        route = record.origin.topic.removeprefix("http:")
        by_route[route] = by_route.get(route, 0) + 1
    assert refused, "the corpus refused nothing: it tests nothing"
    assert forbidden, "no body named another tenant: the gate was not tried"
    assert by_route.get("/v1/moderate", 0) == refused.get("/v1/moderate", 0)
    for route, count in refused.items():  # a refused OpenAI request may hold several refusals
        assert by_route.get(route, 0) >= count, (route, by_route, refused)


async def test_without_a_scorer_the_pack_decides_or_the_api_says_retry_after(
    settings: Settings, tmp_path: Path
) -> None:
    """The scorer's door is closed: a fail-closed pack sends the post to review (source `rule`),
    a fail-open pack makes the API answer 503 with Retry-After, at once. The post's current
    decision is then the API's, until a human's comes along the action topics."""
    (tmp_path / "packs.yaml").write_text(
        'id: default\nversion: "1"\ntenants: ["*"]\nscorer_unavailable: fail_closed\n---\n'
        'id: open-forum\nversion: "1"\ntenants: [openco]\nscorer_unavailable: fail_open\n'
    )
    port = free_port()
    env = env_for(
        settings,
        GUARDSTREAM_API_PORT=str(port),
        GUARDSTREAM_API_SCORER_URL=f"http://127.0.0.1:{free_port()}",  # nobody listens
        GUARDSTREAM_POLICY_DIR=str(tmp_path),
        **database_env(settings),
    )
    key, openco = await add_key(settings), await add_key(settings, "openco")
    api = Process("api", env, tmp_path).start()
    try:
        await asyncio.to_thread(api.wait_ready, 120)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, headers=bearer(key)
        ) as client:
            closed = await client.post("/v1/moderate", json={"text": SAFE, "post_id": "c-1"})
            opened = await client.post(
                "/v1/moderate",
                json={"text": SAFE, "post_id": "o-1", "tenant": "openco"},
                headers=bearer(openco),
            )
            # The current decision, from the action topics: the API's own, then a human's.
            current = await current_decision(client, "c-1", lambda d: True)
            # The same decision (the API's answer adds the review reference beside it).
            assert Decision.from_json(current.content) == Decision.from_json(closed.content)
            assert closed.json()["review"]["poll"] == "/v1/decisions/c-1?tenant=default"
            human = Decision.from_json(closed.content).model_copy(
                update={
                    "decision_id": "human-c-1",
                    "produced_at": utcnow(),
                    "verdict": Verdict.SAFE,
                    "action": Action.ALLOW,
                    "source": Source.HUMAN,
                }
            )
            await publish(settings, Topic.ALLOW, human)
            after = await current_decision(client, "c-1", lambda d: d.source is Source.HUMAN)
            assert Decision.from_json(after.content) == human
            assert (await client.get("/v1/decisions/nobody")).status_code == 404
            bad = await client.get("/v1/decisions/bad%00id")
            assert bad.status_code == 422 and bad.json()["reason"]
            # Another tenant's decisions are not this key's to read.
            other = await client.get("/v1/decisions/c-1", params={"tenant": "openco"})
            assert other.status_code == 403, other.text
    finally:
        api.stop()
    decision = Decision.from_json(closed.content)
    assert (decision.verdict, decision.action, decision.source) == (
        Verdict.CONTROVERSIAL,
        Action.REVIEW,
        Source.RULE,
    )
    assert opened.status_code == 503 and opened.headers["Retry-After"] == "1"
    review = await read_all(settings, [TopicNames(settings.namespace)[Topic.REVIEW]])
    assert [Decision.from_json(r).post_id for r in review] == ["c-1"]
    assert orjson.loads(opened.content)["error"]
