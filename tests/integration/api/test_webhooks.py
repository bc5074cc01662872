"""Decision callbacks (issue 20) against real parts: `guardstream api` as its own OS process
with PostgreSQL, the broker and Redis, tenants' webhooks registered with the CLI, and a real
HTTP receiver in this test that checks every signature the way the docs tell receivers to.

The API's scorer is unreachable and its pack fails closed, so every post it gets is contested
(to review, source `rule`) without a model: the review's outcome is then published on the
action topics as the review service and the SLA timer publish theirs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from guardstream.api import db as api_db
from guardstream.api.delivery import DeliveryLoop, Watched, WebhookStore, webhook_client
from guardstream.contracts.events import Action, Decision, DlqRecord, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from tests.conftest import free_port
from tests.integration.cli.conftest import guardstream
from tests.support.oracle import read_all
from tests.support.processes import Process, env_for
from tests.support.webhook_docs import documented_verifier

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PACKS = 'id: default\nversion: "1"\ntenants: ["*"]\nscorer_unavailable: fail_closed\n'
FAILING_TRIES = 2  # the flaky receiver's failures before it answers 204
MAX_ATTEMPTS = 3


documented_check = documented_verifier()


@dataclass
class Receiver:
    """An HTTP receiver: `/ok` answers 204, `/flaky` 503 `FAILING_TRIES` times then 204,
    `/down` always 500, `/slow` 204 after 3 s, `/redirect` 307 to `/ok`, `/huge` 200 with a
    64 MiB body. It keeps every request it got, by path."""

    port: int = field(default_factory=free_port)
    got: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=dict)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            seen = self.got.setdefault(request.path, [])
            seen.append((dict(request.headers), body))
            self.arrived.notify_all()
        if request.path == "/flaky" and len(seen) <= FAILING_TRIES:
            return web.Response(status=503)
        if request.path == "/down":
            return web.Response(status=500)
        if request.path == "/slow":
            await asyncio.sleep(3)
        if request.path == "/redirect":
            return web.Response(status=307, headers={"Location": "/ok"})
        if request.path == "/huge":  # 64 MiB the sender has no reason to read
            answer = web.StreamResponse(status=200)
            await answer.prepare(request)
            for _ in range(64):
                await answer.write(b"x" * (1 << 20))
            return answer
        return web.Response(status=204)

    async def wait(self, path: str, count: int, timeout_s: float = 60) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.got.get(path, [])) >= count)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    server = web.Application()
    server.router.add_post("/{name}", made.handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "localhost", made.port).start()  # each address `localhost` has
    yield made
    await runner.cleanup()


@pytest.fixture
async def db_settings(settings: Settings, database_url: str) -> AsyncIterator[Settings]:
    schema = f"t_{settings.namespace}"
    yield settings.replace(
        database={"url": SecretStr(database_url), "review_schema": schema},
        webhooks={
            "allow_private": True,
            "max_attempts": MAX_ATTEMPTS,
            "backoff_base_s": 0.05,
            "backoff_cap_s": 0.2,
            "timeout_s": 5,
            "poll_s": 0.1,
        },
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def env(settings: Settings) -> dict[str, str]:
    hooks = settings.webhooks
    return {
        "DATABASE_URL": settings.database.url.get_secret_value(),
        "GUARDSTREAM_REVIEW_DB_SCHEMA": settings.database.review_schema,
        "GUARDSTREAM_WEBHOOK_ALLOW_PRIVATE": "true" if hooks.allow_private else "false",
        "GUARDSTREAM_WEBHOOK_MAX_ATTEMPTS": str(hooks.max_attempts),
        "GUARDSTREAM_WEBHOOK_BACKOFF_BASE_S": str(hooks.backoff_base_s),
        "GUARDSTREAM_WEBHOOK_BACKOFF_CAP_S": str(hooks.backoff_cap_s),
        "GUARDSTREAM_WEBHOOK_TIMEOUT_S": str(hooks.timeout_s),
        "GUARDSTREAM_WEBHOOK_POLL_S": str(hooks.poll_s),
    }


async def register(settings: Settings, tenant: str, url: str) -> str:
    ran = await guardstream(
        settings, "webhooks", "set", "--tenant", tenant, "--url", url, env=env(settings)
    )
    assert ran.code == 0, ran.stderr
    return ran.lines[-1]


def final(contested: Decision, source: Source, name: str) -> Decision:
    """What review (or the SLA timer) publishes for a contested decision."""
    return contested.model_copy(
        update={
            "event_id": f"{name}-{contested.post_id}",
            "decision_id": f"{name}-{contested.post_id}",
            "produced_at": utcnow(),
            "decided_at": utcnow(),
            "verdict": Verdict.SAFE,
            "action": Action.ALLOW,
            "source": source,
            "reason": f"{name} decided",
        }
    )


async def publish(settings: Settings, *decisions: Decision) -> None:
    """To the allow topic, all under one key: one partition, read in this order."""
    producer = make_producer(settings, client_id="test")
    await producer.start()
    try:
        topic = TopicNames(settings.namespace)[Topic.ALLOW]
        for decision in decisions:
            await producer.send_and_wait(topic, decision.to_json(), key=b"one-partition")
    finally:
        await producer.stop()


async def test_final_decisions_on_api_posts_are_called_back_once_signed_retried_or_dead(
    db_settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    settings = db_settings
    await ensure_topics(settings)
    (tmp_path / "packs.yaml").write_text(PACKS)
    secrets = {
        tenant: await register(settings, tenant, receiver.url(path, host))
        for tenant, path, host in (
            ("acme", "/ok", "localhost"),  # a name: resolved, its address judged and used
            ("flaky", "/flaky", "127.0.0.1"),
            ("down", "/down", "127.0.0.1"),
        )
    }
    port = free_port()
    api = Process(
        "api",
        env_for(
            settings,
            GUARDSTREAM_API_PORT=str(port),
            GUARDSTREAM_API_SCORER_URL=f"http://127.0.0.1:{free_port()}",  # nobody listens
            GUARDSTREAM_POLICY_DIR=str(tmp_path),
            GUARDSTREAM_API_AUTH="off",  # keys are not this test's business (loopback only)
            **env(settings),
        ),
        tmp_path,
    ).start()
    try:
        await asyncio.to_thread(api.wait_ready, 120)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            contested: dict[str, Decision] = {}
            for tenant in ("acme", "flaky", "down", "nohook"):
                answer = await client.post(
                    "/v1/moderate",
                    json={"text": "Is it true?", "tenant": tenant, "post_id": f"p-{tenant}"},
                )
                assert answer.status_code == 200, answer.text
                contested[tenant] = Decision.from_json(answer.content)
                assert contested[tenant].action is Action.REVIEW
        human = final(contested["acme"], Source.HUMAN, "human")
        stream_post = final(contested["acme"], Source.HUMAN, "human").model_copy(
            update={
                "post_id": "never-through-the-api",
                "event_id": "human-stream",
                "decision_id": "human-stream",
            }
        )
        await publish(
            settings,
            human,
            stream_post,  # not watched: a stream post
            final(contested["nohook"], Source.HUMAN, "human"),  # watched, but no webhook
            final(contested["flaky"], Source.SLA_TIMEOUT, "sla"),
            final(contested["down"], Source.HUMAN, "human"),
        )
        await receiver.wait("/ok", 1)
        ((headers, body),) = receiver.got["/ok"]
        assert body == human.to_json()
        assert Decision.from_json(body) == human
        assert headers["X-Guardstream-Event-Id"] == human.event_id
        assert headers["Host"] == f"localhost:{receiver.port}"  # sent to its address, as named
        assert documented_check(secrets["acme"], body, headers["X-Guardstream-Signature"])
        assert not documented_check(secrets["flaky"], body, headers["X-Guardstream-Signature"])

        await receiver.wait("/flaky", FAILING_TRIES + 1)
        await receiver.wait("/down", MAX_ATTEMPTS)
        for _, signed in receiver.got["/flaky"]:
            assert Decision.from_json(signed).source is Source.SLA_TIMEOUT

        # The human decision again (a replay), then an SLA decision on the same post behind
        # it on the same partition: once that arrives, the replay was read, and not sent.
        late = final(contested["acme"], Source.SLA_TIMEOUT, "sla")
        await publish(settings, human, late)
        await receiver.wait("/ok", 2)
        assert [Decision.from_json(b).event_id for _, b in receiver.got["/ok"]] == [
            human.event_id,
            late.event_id,
        ]

        dead = await until_dead(settings, "down")
        assert (
            dead["attempts"] == MAX_ATTEMPTS
            and "webhook_refused: answered 500" in dead["last_error"]
        )
        dlq = [
            DlqRecord.from_json(r)
            for r in await read_all(settings, [TopicNames(settings.namespace)[Topic.DLQ]])
        ]
        (record,) = [r for r in dlq if r.origin.topic.startswith("webhook:")]
        assert record.origin.topic == "webhook:down"
        assert (record.reason, record.attempts) == ("webhook_refused", MAX_ATTEMPTS)
        assert record.consumer == settings.group_id("api-webhooks")
        assert "answered 500" in record.detail
        await asyncio.sleep(1)  # nothing more arrives: the dead one is tried no further
    finally:
        api.stop()
    assert len(receiver.got["/down"]) == MAX_ATTEMPTS
    assert len(receiver.got["/flaky"]) == FAILING_TRIES + 1
    assert len(receiver.got["/ok"]) == 2
    assert set(receiver.got) == {"/ok", "/flaky", "/down"}
    flaky = await deliveries(settings, "flaky")
    assert [(d["status"], d["attempts"]) for d in flaky] == [("delivered", FAILING_TRIES + 1)]

    # Listed (secrets never), removed once, and a second removal says there is none.
    assert {h["tenant"]: h["removed_at"] for h in await listed(settings)} == dict.fromkeys(
        ("acme", "down", "flaky")
    )
    cli = ("webhooks", "remove", "--tenant", "acme")
    assert (await guardstream(settings, *cli, env=env(settings))).code == 0
    assert (await guardstream(settings, *cli, env=env(settings))).code == 1
    removed = {h["tenant"] for h in await listed(settings) if h["removed_at"]}
    assert removed == {"acme"}


async def listed(settings: Settings) -> list[dict[str, object]]:
    ran = await guardstream(settings, "webhooks", "list", "--json", env=env(settings))
    assert ran.code == 0, ran.stderr
    assert "whsec_" not in ran.stdout
    return [orjson.loads(line) for line in ran.lines]


async def deliveries(settings: Settings, tenant: str, *args: str) -> list[dict[str, object]]:
    ran = await guardstream(
        settings, "webhooks", "deliveries", "--tenant", tenant, "--json", *args, env=env(settings)
    )
    assert ran.code == 0, ran.stderr
    return [orjson.loads(line) for line in ran.lines]


async def until_dead(settings: Settings, tenant: str) -> dict[str, object]:
    async with asyncio.timeout(60):
        while True:
            found = await deliveries(settings, tenant, "--status", "dead")
            if found:
                (row,) = found
                return row
            await asyncio.sleep(0.5)


async def test_replicas_share_deliveries_and_removed_or_private_hooks_are_dead_lettered(
    db_settings: Settings, receiver: Receiver
) -> None:
    """Two delivery loops (two replicas) on one table: every delivery is sent once. A
    webhook removed before its delivery, and one whose host is on a private address when
    private addresses are not allowed, go to the DLQ without a POST."""
    settings = db_settings
    await ensure_topics(settings)
    pool = await api_db.connect(settings)
    producer = make_producer(settings, client_id="test")
    await producer.start()
    try:
        store = WebhookStore(pool)
        await store.register("acme", receiver.url("/ok"), "whsec_acme")
        await store.register("gone", receiver.url("/ok"), "whsec_gone")
        posts = [Watched("acme", f"p{i}", "default@1") for i in range(40)]
        await store.watch([*posts, Watched("gone", "g1", "default@1")])
        template = Decision.from_json(orjson.dumps(SAMPLE))
        decisions = [
            template.model_copy(update={"post_id": p.post_id, "event_id": f"e-{p.post_id}"})
            for p in posts
        ]
        gone = template.model_copy(update={"tenant": "gone", "post_id": "g1", "event_id": "e-g1"})
        async with webhook_client(settings) as client:
            one = DeliveryLoop(settings, store, client, producer)
            two = DeliveryLoop(settings, store, client, producer)
            await one.enqueue([*decisions, gone])
            await two.enqueue([*decisions, gone])  # a replay: nothing new
            assert (one.counts["enqueued"], two.counts["enqueued"]) == (41, 0)
            assert await store.remove("gone")
            # A delivery whose last try failed but whose DLQ record was never sent (the broker
            # refused it, or the replica died): dead-lettered now, without another POST.
            await pool.execute(
                "INSERT INTO webhook_deliveries (tenant, event_id, post_id, payload, attempts,"
                " last_error) VALUES ('acme', 'e-exhausted', 'p0', '{}', $1, $2)",
                MAX_ATTEMPTS,
                "webhook_unreachable: no answer within 5 s",
            )
            stop = asyncio.Event()
            runs = [asyncio.create_task(loop.run(stop)) for loop in (one, two)]
            await receiver.wait("/ok", 40)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*runs)
            assert one.counts["delivered"] > 0 and two.counts["delivered"] > 0, "shared"
            private = DeliveryLoop(
                settings.replace(webhooks={"allow_private": False, "max_attempts": 1}),
                store,
                client,
                producer,
            )
            forbidden = await private.attempt(receiver.url("/ok"), "whsec_acme", "e-x", b"{}")
            assert forbidden.reason == "webhook_forbidden_address" and "loopback" in (
                forbidden.error or ""
            )
        ids = sorted(Decision.from_json(b).event_id for _, b in receiver.got["/ok"])
        assert ids == sorted(d.event_id for d in decisions)  # each once, none for `gone`
        assert one.counts["dead"] + two.counts["dead"] == 2
        (row,) = await store.deliveries("gone")
        assert row.status == "dead" and "webhook_removed" in (row.last_error or "")
    finally:
        await producer.stop()
        await pool.close()
    dlq = [
        DlqRecord.from_json(r)
        for r in await read_all(settings, [TopicNames(settings.namespace)[Topic.DLQ]])
    ]
    assert sorted((r.origin.topic, r.reason, r.detail, r.attempts) for r in dlq) == [
        ("webhook:acme", "webhook_unreachable", "no answer within 5 s", MAX_ATTEMPTS),
        ("webhook:gone", "webhook_removed", "the webhook was removed", 1),
    ]


SAMPLE = {
    "schema_version": "1.0",
    "event_id": "d-1",
    "produced_at": "2026-12-07T14:00:00Z",
    "decision_id": "d-1",
    "post_id": "p-1",
    "post_event_id": "e-1",
    "tenant": "acme",
    "verdict": "safe",
    "action": "allow",
    "reason": "a reviewer allowed it",
    "source": "human",
    "model": "tiny",
    "policy": "default@1",
    "content_key": "0" * 32,
    "decided_at": "2026-12-07T14:00:00Z",
}


async def test_a_hostile_receiver_costs_one_bounded_try(
    db_settings: Settings, receiver: Receiver
) -> None:
    """A receiver that answers slowly is cut off at the timeout, a redirect is not followed
    (it could lead anywhere the URL rule refuses), and a huge answer is never read."""
    settings = db_settings.replace(webhooks={"timeout_s": 0.5})
    pool = await api_db.connect(settings)
    producer = make_producer(settings, client_id="test")
    await producer.start()
    try:
        async with webhook_client(settings) as client:
            loop = DeliveryLoop(settings, WebhookStore(pool), client, producer)

            async def timed(path: str) -> tuple[str | None, str, float]:
                started = time.monotonic()
                tried = await loop.attempt(receiver.url(path), "whsec_x", "e-1", b"{}")
                return tried.error, tried.reason, time.monotonic() - started

            error, reason, took = await timed("/slow")
            assert (error, reason) == ("no answer within 0.5 s", "webhook_unreachable")
            assert took < 2
            error, reason, _ = await timed("/redirect")
            assert (error, reason) == ("answered 307", "webhook_refused")
            error, _, took = await timed("/huge")
            assert error is None and took < 5
    finally:
        await producer.stop()
        await pool.close()
    assert "/ok" not in receiver.got  # the redirect was not followed
