"""Tenant in every identity of the review store (real PostgreSQL): posts of different tenants
sharing a post_id each keep their text and get their own task, and migration 0005 carries an
existing database over without losing or re-attributing anything."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from guardstream.contracts.events import Source, Verdict, utcnow
from guardstream.policy import load_registry
from guardstream.review.consumer import new_task
from guardstream.review.logic import TaskState, task_id
from guardstream.review.store import MIGRATIONS, PostText, ReviewStore
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import CachedVerdict
from tests.integration.review.conftest import contested, new_test_post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICIES = load_registry(None)
TENANTS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
# What `contracts.Id` lets through (no control characters, no lone surrogates): the contract's
# handling of the rest is tested where it is decided (tests/unit/contracts/test_contracts.py).
POST_IDS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


@st.composite
def colliding_posts(draw: st.DrawFn) -> list[tuple[str, str]]:
    """(tenant, post_id) pairs over few tenants and few post ids: many post ids are shared."""
    tenants = draw(st.lists(TENANTS, min_size=2, max_size=3, unique=True))
    ids = draw(st.lists(POST_IDS, min_size=1, max_size=3, unique=True))
    pairs = st.tuples(st.sampled_from(tenants), st.sampled_from(ids))
    return draw(st.lists(pairs, min_size=1, max_size=8, unique=True))


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(posts=colliding_posts(), text_first=st.booleans())
def test_posts_sharing_a_post_id_each_keep_their_text_and_get_their_own_task(
    review_settings: Settings, posts: list[tuple[str, str]], text_first: bool
) -> None:
    run = uuid.uuid4().hex[:8]  # examples share the schema: their posts must not meet

    async def check() -> None:
        store = await ReviewStore.open(review_settings)
        try:
            decisions = []
            texts = []
            for tenant, pid in posts:
                post = new_test_post(tenant).model_copy(update={"post_id": f"{run}{pid}"})
                decisions.append(contested(post))
                texts.append(PostText(post.post_id, tenant, "prompt", f"{tenant} says {pid}", None))
            tasks = [new_task(d, POLICIES) for d in decisions]
            if text_first:
                await store.save_post_texts(texts)
            assert await store.create_tasks(tasks) == len(posts)
            assert await store.create_tasks(tasks) == 0  # a replay creates nothing
            if not text_first:
                await store.save_post_texts(texts)
            await store.save_post_texts(texts)  # a replayed post changes nothing
            async with store.transaction() as tx:
                for decision, text in zip(decisions, texts, strict=True):
                    ident = task_id(decision.tenant, decision.post_id, decision.policy)
                    task = await tx.task(ident)
                    assert task is not None and task.tenant == decision.tenant
                    assert task.decision_id == decision.decision_id
                    stored = await tx.post_text(decision.post_id, decision.tenant)
                    assert stored is not None and stored.text == text.text
        finally:
            await store.close()

    asyncio.run(check())


def migrations_before(number: str) -> list[tuple[str, str]]:
    return [
        (path.name, path.read_text(encoding="utf-8"))
        for path in sorted(MIGRATIONS.glob("*.sql"))
        if path.name < number
    ]


async def test_migration_0005_keeps_existing_rows_working(
    review_settings: Settings, database_url: str
) -> None:
    """A database as 0001-0004 left it: a decided task of tenant acme with its text and the
    human verdict queued for the cache (keyed by content key alone), and one queued verdict
    no task explains. After 0005 the task and text still work, a replay of acme's decision
    still finds its task, tenant beta's post with the same post_id gets its own, and the
    queued verdict is acme's only."""
    schema = review_settings.database.review_schema
    conn = await asyncpg.connect(database_url)
    post = new_test_post("acme")
    decision = contested(post)
    decided_at = utcnow()
    human = CachedVerdict(
        verdict=Verdict.UNSAFE,
        reason="human review corrected the model (unsafe): acme's note",
        source=Source.HUMAN,
        model="tiny",
        decided_at=decided_at,
    )
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for name, sql in migrations_before("0005"):
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", name)
        await conn.execute(
            "INSERT INTO post_texts (post_id, tenant, kind, text) VALUES ($1, 'acme', 'prompt',"
            " 'acme text')",
            post.post_id,
        )
        old_id = "0" * 32  # made by the former task_id(post_id, policy): kept as it is
        await conn.execute(
            "INSERT INTO tasks (task_id, post_id, policy, tenant, decision_id, post_event_id,"
            " content_key, model_verdict, reason, model, created_at, deadline, warn_at,"
            " assign_by, state, decided_at, human_verdict) VALUES ($1, $2, $3, 'acme', $4, $5,"
            " $6, 'controversial', 'r', 'tiny', $7, $7, $7, $7, 'decided', $8, 'unsafe')",
            old_id,
            post.post_id,
            decision.policy,
            decision.decision_id,
            post.event_id,
            decision.content_key,
            decision.decided_at,
            decided_at,
        )
        for key, payload in (
            (decision.content_key, human),
            (uuid.uuid4().hex, human.model_copy(update={"decided_at": utcnow()})),
        ):
            await conn.execute(
                "INSERT INTO outbox (kind, topic, key, payload) VALUES"
                " ('human_verdict', 'verdict_cache', $1, $2)",
                key,
                payload.model_dump_json().encode(),
            )
    finally:
        await conn.close()

    store = await ReviewStore.open(review_settings)
    try:
        assert await store.create_tasks([new_task(decision, POLICIES)]) == 0  # its task exists
        beta = contested(post.model_copy(update={"tenant": "beta"}))
        assert await store.create_tasks([new_task(beta, POLICIES)]) == 1
        await store.save_post_texts([PostText(post.post_id, "beta", "prompt", "beta text", None)])
        async with store.transaction() as tx:
            task = await tx.task(old_id)
            assert task is not None and task.state is TaskState.DECIDED
            acme_text = await tx.post_text(post.post_id, "acme")
            beta_text = await tx.post_text(post.post_id, "beta")
            assert acme_text is not None and acme_text.text == "acme text"
            assert beta_text is not None and beta_text.text == "beta text"
            assert await tx.task(task_id("beta", post.post_id, beta.policy)) is not None
            queued = await tx.conn.fetch(
                "SELECT key, payload FROM outbox WHERE kind = 'human_verdict'"
            )
        assert [r["key"] for r in queued] == [f"acme:{decision.content_key}"]
        assert CachedVerdict.model_validate_json(bytes(queued[0]["payload"])) == human
    finally:
        await store.close()
