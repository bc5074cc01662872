"""`guardstream review` as a user runs it: a separate OS process, a reviewer created with
`guardstream review add-reviewer`, a contested post worked through the API, SIGTERM → exit 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid

import asyncpg
import httpx
import pytest

from guardstream.contracts.topics import Topic
from guardstream.review.logic import task_id
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from tests.integration.review.conftest import contested, new_test_post, produce, read_topic
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_review_process_serves_decides_and_stops_cleanly(
    settings: Settings, database_url: str, tmp_path: object
) -> None:
    schema = f"e2e_{settings.namespace}"
    await ensure_topics(settings)
    env = env_for(
        settings,
        DATABASE_URL=database_url,
        GUARDSTREAM_REVIEW_DB_SCHEMA=schema,
        GUARDSTREAM_REVIEW_SESSION_SECRET=uuid.uuid4().hex,
    )
    review = Process("review", env, tmp_path)  # type: ignore[arg-type]
    review.env["GUARDSTREAM_REVIEW_PORT"] = str(review.port)  # its /readyz is on its own port
    try:
        review.start().wait_ready(timeout=120)
        added = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "guardstream",
                "review",
                "add-reviewer",
                "--id",
                "alice",
                "--tenant",
                "acme",
                "--password-stdin",
                "--token",
            ],
            input="correct-horse-battery\n",
            env=review.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip().splitlines()[-1]
        assert token.startswith("gsr_")
        post = new_test_post()
        decision = contested(post)
        await produce(
            settings, (Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)
        )
        tid = task_id(post.tenant, post.post_id, decision.policy)
        base = f"http://127.0.0.1:{review.port}"
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                claimed = (await http.post("/api/v1/tasks/claim")).json()
                if claimed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert claimed and claimed["task_id"] == tid
            response = await http.post(
                f"/api/v1/tasks/{tid}/decision",
                json={
                    "outcome": "correct",
                    "verdict": "safe",
                    "reason": "讽刺",
                    "tags": ["政治隐喻"],
                },
            )
            assert response.status_code == 200, response.text
            assert response.json()["action"] == "allow"
        [allowed] = await read_topic(settings, Topic.ALLOW, 1)
        assert allowed["source"] == "human" and allowed["post_id"] == post.post_id
        assert review.kill(signal.SIGTERM) == 0
        assert "Traceback" not in review.log()
        assert post.text not in review.log()  # post text is never logged
    finally:
        review.stop()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
