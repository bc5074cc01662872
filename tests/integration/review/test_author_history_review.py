"""A held post reaches a person, whose verdict becomes the author's history: the review
process (real PostgreSQL, broker and Redis, the shipped packs, whose example packs read author
history) makes a task of a `hold` decision, the reviewer's `unsafe` is counted as confirmed
for the post's author once the relay has published it, and the task page shows the figures."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from guardstream.contracts.events import Action, Verdict
from guardstream.contracts.topics import Topic
from guardstream.review.logic import task_id
from guardstream.verdict.author_history import Authored, RedisAuthorHistory
from tests.integration.review.conftest import (
    PASSWORD,
    Console,
    contested,
    new_test_post,
    produce,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TENANT = "finance-platform"  # services/guardstream/policy/packs/example-finance.yaml


async def test_a_held_post_is_reviewed_and_its_author_s_history_shows_the_confirmation(
    console: Console,
) -> None:
    post = new_test_post(TENANT)
    held = contested(post, policy="finance-platform@2026.1").model_copy(
        update={"action": Action.HOLD}
    )
    history = RedisAuthorHistory.from_settings(console.settings)
    try:
        # What the scorer did when it decided the post: counted for the author.
        await history.record([Authored(post.author_id, held)])
        await produce(
            console.settings,
            (Topic.POSTS, post, post.post_id),
            (Topic.REVIEW, held, post.post_id),
        )
        await console.wait_tasks(1)  # a hold is a review item like a review
        tid = task_id(post.tenant, post.post_id, held.policy)
        await console.add_reviewer("alice", (TENANT,))
        async with console.client("alice") as http:
            assert (await http.post("/api/v1/tasks/claim")).json()["task_id"] == tid
            decided = await http.post(
                f"/api/v1/tasks/{tid}/decision",
                json={
                    "outcome": "correct",
                    "verdict": "unsafe",
                    "reason": "保本高收益承诺",
                    "tags": ["地域攻击"],
                },
            )
            assert decided.status_code == 200, decided.text

        for _ in range(100):  # the relay counts it once the broker has the review
            figures = await history.figures_for_decision(TENANT, held.decision_id, time.time())
            if figures is not None and figures.confirmed_unsafe_7d:
                break
            await asyncio.sleep(0.1)
        assert figures is not None
        assert (figures.confirmed_unsafe_7d, figures.controversial_7d) == (1, 1)

        async with httpx.AsyncClient(base_url=console.base_url, timeout=30) as http:
            login = await http.post(
                "/console/login", data={"reviewer": "alice", "password": PASSWORD}
            )
            assert login.status_code == 303, login.text
            page = (await http.get(f"/console/tasks/{tid}")).text
        assert 'id="author-history"' in page
        assert 'id="author-confirmed_unsafe-7d">1<' in page
        assert post.author_id not in page  # figures, never the author's id
        # A person's safe on another decision of nobody known changes nothing, raises nothing.
        await history.record_review(TENANT, "d-unknown", Verdict.SAFE, held.decided_at)
    finally:
        await history.close()
