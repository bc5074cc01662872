"""kill -9 of the review process (a separate OS process) with contested posts still arriving:
after a restart there is exactly one review task per contested post, none lost.

The kill is certain, not a race: the loop's `after_publish` fault point SIGKILLs the process
after a batch's tasks are stored and before its offsets are committed, so the restart must
read that batch again (and store none of it twice).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import asyncpg
import pytest

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from tests.integration.review.conftest import contested, new_test_post
from tests.support.oracle import committed_offsets
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

POSTS, BATCH, KILL_AT_BATCH = 120, 10, 3


async def task_posts(database_url: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f'SELECT post_id FROM "{schema}".tasks')
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return [row["post_id"] for row in rows]


async def test_review_killed_between_storing_and_committing_keeps_one_task_per_post(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    schema = f"e2e_{settings.namespace}"
    await ensure_topics(settings)
    env = env_for(
        settings,
        DATABASE_URL=database_url,
        GUARDSTREAM_REVIEW_DB_SCHEMA=schema,
        GUARDSTREAM_REVIEW_SESSION_SECRET=uuid.uuid4().hex,
        GUARDSTREAM_REVIEW_BATCH_MAX=str(BATCH),
    )
    (tmp_path / "doomed").mkdir()
    doomed = Process(
        "review",
        {**env, "GUARDSTREAM_FAULT": f"after_publish:{KILL_AT_BATCH}"},
        tmp_path / "doomed",
    )
    doomed.env["GUARDSTREAM_REVIEW_PORT"] = str(doomed.port)
    restarted = Process("review", env, tmp_path)
    restarted.env["GUARDSTREAM_REVIEW_PORT"] = str(restarted.port)
    posts = [new_test_post() for _ in range(POSTS)]
    names = TopicNames(settings.namespace)
    try:
        producer = make_producer(settings, "test-producer")
        await producer.start()
        try:
            acks = []
            for post in posts:
                # Review decisions only: every batch then creates tasks.
                decision = contested(post).to_json()
                acks.append(
                    await producer.send(names[Topic.REVIEW], decision, key=post.post_id.encode())
                )
            await asyncio.gather(*acks)
        finally:
            await producer.stop()

        doomed.start()
        assert doomed.proc is not None
        assert await asyncio.to_thread(doomed.wait, 240) == -signal.SIGKILL
        assert "fault point reached" in doomed.log()
        stored = await task_posts(database_url, schema)
        assert 0 < len(stored) < POSTS, len(stored)  # killed mid-stream
        committed = await committed_offsets(
            settings, settings.group_id("review"), names[Topic.REVIEW]
        )
        # The batch it died on was stored, not committed: the commit is behind the store.
        assert sum(o or 0 for o in committed.values()) < len(stored), (committed, len(stored))

        restarted.start().wait_ready(timeout=120)
        expected = sorted(p.post_id for p in posts)
        for _ in range(600):
            stored = await task_posts(database_url, schema)
            if len(stored) >= POSTS:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # a late duplicate, were there one, would land by now
        stored = await task_posts(database_url, schema)
        assert sorted(stored) == expected  # each contested post exactly once
        assert restarted.proc is not None and restarted.proc.poll() is None
        assert "Traceback" not in restarted.log()
    finally:
        doomed.stop()
        restarted.stop()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
