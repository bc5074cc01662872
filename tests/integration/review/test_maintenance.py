"""Retention by store on the real PostgreSQL and broker: `guardstream maintenance` deletes what
each store keeps past its retention and nothing younger (a decided post's text, task and
reviews; relayed outbox rows but not unsent ones nor a live human verdict's; audit rows;
expired tokens; the author index; archive days), a second run finds nothing (idempotent), a run
that finds the lock held does nothing, two concurrent runs take turns, and the oldest row kept
is reported per store. The topics' retention is checked against the settings."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from guardstream.contracts.events import Verdict, utcnow
from guardstream.contracts.feedback import FeedbackSample
from guardstream.devtools import maintenance
from guardstream.devtools.maintenance import MAINTENANCE_LOCK, run_maintenance
from guardstream.review.store import ReviewStore
from guardstream.runtime.kafka import apply_topic_retention, ensure_topics
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive
from tests.integration.cli.conftest import guardstream

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)


async def seed(settings: Settings) -> None:
    now = utcnow()
    store = await ReviewStore.open(settings)
    try:
        async with store.transaction() as tx:
            c = tx.conn
            await c.execute(
                "INSERT INTO reviewers (id, tenants, role, password_hash) VALUES"
                " ('rv', '{acme}', 'reviewer', 'x')"
            )
            for tid, state, decided in (
                ("t-old", "decided", now - 40 * DAY),
                ("t-new", "decided", now - DAY),
                ("t-open", "pending", None),
            ):
                await c.execute(
                    "INSERT INTO tasks (task_id, post_id, policy, tenant, decision_id,"
                    " post_event_id, content_key, model_verdict, reason, model, created_at,"
                    " deadline, warn_at, assign_by, state, decided_at) VALUES ($1, $2, 'p@1',"
                    " 'acme', $3, $4, $5, 'controversial', 'r', 'tiny', $6, $6, $6, $6, $7, $8)",
                    tid,
                    f"p-{tid}",
                    f"d-{tid}",
                    f"e-{tid}",
                    "0" * 32,
                    now - 50 * DAY,
                    state,
                    decided,
                )
                await c.execute(
                    "INSERT INTO post_texts (post_id, tenant, kind, text, received_at)"
                    " VALUES ($1, 'acme', 'prompt', 'text', $2)",
                    f"p-{tid}",
                    now - 50 * DAY,
                )
            await c.execute(
                "INSERT INTO reviews (review_id, task_id, stage, reviewer, outcome, verdict,"
                " tags, reviewed_at) VALUES ('r-old', 't-old', 'first', 'rv', 'confirm',"
                " 'unsafe', '{x}', $1)",
                now - 40 * DAY,
            )
            outbox = (
                ("event", now - 3 * DAY, now - 3 * DAY),  # relayed long ago: purged
                ("event", now - 3 * DAY, None),  # never sent: kept
                ("event", now, now),  # just relayed: kept
                ("human_verdict", now - 3 * DAY, now - 3 * DAY),  # its verdict lives: kept
            )
            for kind, created, sent in outbox:
                await c.execute(
                    "INSERT INTO outbox (kind, topic, key, payload, created_at, sent_at)"
                    " VALUES ($1, 't', 'k', '\\x7b7d', $2, $3)",
                    kind,
                    created,
                    sent,
                )
            for at in (now - 400 * DAY, now - DAY):
                await c.execute(
                    "INSERT INTO audit (at, action, outcome) VALUES ($1, 'a', 'ok')", at
                )
            await c.execute(
                "INSERT INTO api_tokens (token_hash, reviewer_id, expires_at) VALUES"
                " ('h1', 'rv', $1), ('h2', 'rv', $2)",
                now - DAY,
                now + DAY,
            )
            await c.execute(
                "INSERT INTO post_authors (tenant, post_id, author_key, received_at) VALUES"
                " ('acme', 'p-a', 'k', $1), ('acme', 'p-b', 'k', $2)",
                now - 400 * DAY,
                now - DAY,
            )
    finally:
        await store.close()
    sample = FeedbackSample(
        event_id="s",
        produced_at=now,
        sample_id="s-old",
        post_id="p-x",
        tenant="acme",
        text="old text",
        content_key="0" * 32,
        pred_verdict=Verdict.SAFE,
        human_verdict=Verdict.UNSAFE,
        reviewer="rv",
        policy="p@1",
        model="tiny",
        reviewed_at=now - 400 * DAY,
    )
    Archive(settings.feedback.dir).append(
        [sample, sample.model_copy(update={"sample_id": "s-new", "reviewed_at": now - DAY})]
    )


async def test_maintenance_purges_each_store_by_its_retention_once(
    review_settings: Settings, database_url: str
) -> None:
    settings = review_settings
    await seed(settings)
    report = await run_maintenance(settings)
    assert report.ran and report.problems == []
    assert report.purged == {
        "decided_posts": 1,
        "unreviewed_post_texts": 0,
        "outbox": 1,
        "audit": 1,
        "expired_credentials": 1,
        "author_index": 1,
        "feedback_archive": 1,
    }
    store = await ReviewStore.open(settings)
    try:
        tasks = {r["task_id"] for r in await store.retention.db.fetch("SELECT task_id FROM tasks")}
        texts = await store.retention.db.fetch("SELECT post_id FROM post_texts")
        reviews = await store.retention.db.fetchval("SELECT count(*) FROM reviews")
    finally:
        await store.close()
    assert tasks == {"t-new", "t-open"} and reviews == 0
    assert {r["post_id"] for r in texts} == {"p-t-new", "p-t-open"}
    assert [s.sample_id for s in Archive(settings.feedback.dir).read()] == ["s-new"]
    # The oldest row kept per store, exported as the oldest_age gauge.
    age = report.oldest_age_s
    assert 0.9 * 86400 < (age["audit"] or 0) < 1.1 * 86400
    assert (age["decided_tasks"] or 0) < 1.1 * 86400
    assert 1 * 86400 < (age["feedback_archive"] or 0) < 3 * 86400
    observed = {o.attributes["store"]: o.value for o in maintenance._observe_oldest(None)}  # type: ignore[arg-type]
    assert observed["audit"] == age["audit"]

    again = await run_maintenance(settings)
    assert again.ran and set(again.purged.values()) == {0}

    # A run that finds the lock held does nothing; two at once take turns.
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MAINTENANCE_LOCK)
        assert (await run_maintenance(settings)).ran is False
    finally:
        await holder.close()
    both = await asyncio.gather(
        *(run_maintenance(settings.replace(retention={"lock_timeout_s": 60})) for _ in range(2))
    )
    assert [r.ran for r in both] == [True, True]


async def test_topic_retention_follows_the_settings(settings: Settings) -> None:
    await ensure_topics(settings.replace(retention={"dlq_days": 5}))
    assert (
        await apply_topic_retention(settings.replace(retention={"dlq_days": 5}))
    ).differing == {}
    report = await apply_topic_retention(settings.replace(retention={"dlq_days": 2}))
    dlq = f"{settings.namespace}.moderation.dlq.v1"
    assert report.differing == {dlq: (5 * 86_400_000, 2 * 86_400_000)}
    if report.refused is None:  # a broker with AlterConfigs took it
        assert (
            await apply_topic_retention(settings.replace(retention={"dlq_days": 2}))
        ).differing == {}
    else:  # tansu: the difference is reported, by `guardstream maintenance` as a failure
        assert "AlterConfigs" in report.refused


async def test_the_maintenance_command_runs_every_job_and_reports(
    review_settings: Settings,
) -> None:
    await ensure_topics(review_settings)
    ran = await guardstream(review_settings, "maintenance", "--json")
    assert ran.code == 0, ran.stderr
    assert '"ran": true' in ran.stdout and '"feedback_archive": 0' in ran.stdout
