"""Review console fixtures: a PostgreSQL schema per test, the real `guardstream review` process
running in the test's event loop (uvicorn on a free loopback port, the consumer, the relay),
and helpers to create reviewers, produce decisions and read topics."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from guardstream.contracts.events import Action, Decision, Post, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.review import auth
from guardstream.review.logic import Reviewer, Role
from guardstream.review.main import Review, run
from guardstream.runtime.kafka import client_kwargs, ensure_topics
from guardstream.runtime.settings import Settings
from guardstream.verdict.decisions import decision_id
from tests.conftest import free_port, missing

# The review tests' `new_test_post` and `produce` are the shared ones.
from tests.support.events import new_test_post as new_test_post
from tests.support.topics import produce as produce

PASSWORD = "s3cret-pass"
# The console in a real browser: Playwright drives Debian's Chromium (`/usr/bin/chromium`,
# installed by apt in `.ci/run`; never `playwright install`).
CHROMIUM = os.environ.get("GUARDSTREAM_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def page() -> AsyncIterator[object]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before the browser starts
        missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            context = await browser.new_context()
            yield await context.new_page()
        finally:
            await browser.close()


@pytest.fixture
async def review_settings(settings: Settings, database_url: str) -> AsyncIterator[Settings]:
    schema = f"t_{settings.namespace}"
    yield settings.replace(
        database={"url": SecretStr(database_url), "review_schema": schema},
        review={
            "port": free_port(),
            "assign_interval_s": 0.2,
            "lock_s": 60,
            # Tests talk plain http to 127.0.0.1, where httpx never sends a Secure cookie
            # back (test_review_credentials checks the Secure default).
            "cookie_secure": False,
        },
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@dataclass
class Console:
    settings: Settings
    review: Review
    stop: asyncio.Event
    base_url: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.settings.namespace)

    def client(self, reviewer: str | None = None, token: str | None = None) -> httpx.AsyncClient:
        headers = {}
        if reviewer is not None or token is not None:
            headers["Authorization"] = f"Bearer {token or self.tokens[reviewer or '']}"
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)

    async def add_reviewer(
        self, rid: str, tenants: tuple[str, ...], role: Role = Role.REVIEWER, on_call: bool = False
    ) -> Reviewer:
        reviewer = Reviewer(rid, tenants, role, on_call)
        await self.review.services.auth.put_reviewer(
            reviewer, auth.hash_password(PASSWORD), actor="test"
        )
        token, _ = await self.review.services.auth.issue_token(reviewer)
        self.tokens[rid] = token
        return reviewer

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.review.services.store.transaction() as tx:
            return list(await tx.conn.fetch(query, *args))

    async def wait_tasks(self, n: int, within: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            rows = await self.sql("SELECT count(*) AS n FROM tasks")
            if rows[0]["n"] >= n:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{rows[0]['n']} of {n} tasks"
            await asyncio.sleep(0.1)


@pytest.fixture
async def console(review_settings: Settings) -> AsyncIterator[Console]:
    async with serve(review_settings) as running:
        yield running


@asynccontextmanager
async def serve(review_settings: Settings) -> AsyncIterator[Console]:
    """The review process with these settings, in this event loop, once it is ready."""
    await ensure_topics(review_settings)
    stop = asyncio.Event()
    exposed: list[Review] = []
    task = asyncio.create_task(run(review_settings, stop, expose=exposed.append))
    base = f"http://127.0.0.1:{review_settings.review.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            for _ in range(300):
                assert not task.done(), task.exception() if task.done() else ""
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("review process not ready")
        yield Console(review_settings, exposed[0], stop, base)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


def contested(
    post: Post,
    *,
    content_key: str | None = None,
    verdict: Verdict = Verdict.CONTROVERSIAL,
    categories: tuple[str, ...] = ("Politically Sensitive Topics",),
    policy: str = "default@1",
    decided_ago_s: float = 0,
) -> Decision:
    """The decision triage or the scorer would send to actions.review for `post`."""
    key = content_key or uuid.uuid4().hex
    ident = decision_id(post.tenant, post.event_id, policy, key)
    at = utcnow() - timedelta(seconds=decided_ago_s)
    return Decision(
        event_id=ident,
        produced_at=at,
        decision_id=ident,
        post_id=post.post_id,
        post_event_id=post.event_id,
        tenant=post.tenant,
        verdict=verdict,
        action=Action.REVIEW,
        categories=categories,
        confidence=0.55,
        reason="Qwen3Guard: Controversial [Politically Sensitive Topics]",
        rule="controversial:review",
        source="model",  # type: ignore[arg-type]
        model="tiny",
        policy=policy,
        content_key=key,
        decided_at=at,
    )


async def read_topic(
    settings: Settings, topic: Topic, n: int, within: float = 30
) -> list[dict[str, Any]]:
    """The first `n` records of `topic` (all partitions, from the beginning), as JSON."""
    import orjson

    name = TopicNames(settings.namespace)[topic]
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(name) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + within
        while len(found) < n and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(orjson.loads(r.value) for r in records if r.value)
        return found
    finally:
        await consumer.stop()
