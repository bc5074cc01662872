"""A held post reaches a person, whose verdict becomes the author's history: the review
process (real PostgreSQL, broker and Redis, the shipped packs, whose example packs read author
history) makes a task of a `hold` decision, the reviewer's `unsafe` is counted as confirmed
for the post's author once the relay has published it, and the task page shows the figures;
once the review is sampled for QA, the senior re-reviewing it blind gets no context at all."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from guardstream.contracts.events import Action, Verdict, utcnow
from guardstream.contracts.topics import Topic
from guardstream.review.logic import Role, task_id
from guardstream.review.qa_period import parse_period
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

        # The same author posts the same text again; alice decides it too. Beside the held
        # task she now sees it as an exact duplicate and as the author's decided post.
        twin = new_test_post(TENANT, post.text)
        again = contested(twin, content_key=held.content_key, policy=held.policy)
        await produce(
            console.settings,
            (Topic.POSTS, twin, twin.post_id),
            (Topic.REVIEW, again, twin.post_id),
        )
        await console.wait_tasks(2)
        twin_id = task_id(TENANT, twin.post_id, held.policy)
        async with console.client("alice") as http:
            decided = await http.post(
                f"/api/v1/tasks/{twin_id}/decision",
                json={
                    "outcome": "correct",
                    "verdict": "unsafe",
                    "reason": "同一承诺",
                    "tags": ["地域攻击"],
                },
            )
            assert decided.status_code == 200, decided.text
            context = (await http.get(f"/api/v1/tasks/{tid}")).json()["context"]
        assert [n["task_id"] for n in context["similar"]] == [twin_id]
        assert context["author"]["decided"] == 1

        # Both reviews sampled for QA: the senior who re-reviews the held task blind gets no
        # context at all — no similar decisions, no author panel, no author figures — in the
        # API's task JSON and on the console's task page (each would give the label away).
        await console.review.services.qa.sample(parse_period(utcnow().strftime("%Y-%m")))
        assert {r["task_id"] for r in await console.sql("SELECT task_id FROM qa_items")} == {
            tid,
            twin_id,
        }
        await console.add_reviewer("sue", (TENANT,), role=Role.SENIOR)
        async with console.client("sue") as http:
            blind = (await http.get(f"/api/v1/tasks/{tid}")).json()
        assert blind["human_verdict"] is None and blind["context"] is None
        async with httpx.AsyncClient(base_url=console.base_url, timeout=30) as http:
            login = await http.post(
                "/console/login", data={"reviewer": "sue", "password": PASSWORD}
            )
            assert login.status_code == 303, login.text
            page = (await http.get(f"/console/tasks/{tid}")).text
        assert 'id="model-verdict"' in page  # the task page itself, shown blind
        for panel in ('id="similar"', 'id="author-context"', 'id="author-history"'):
            assert panel not in page, panel
        assert "同一承诺" not in page and 'class="reason"' not in page  # no earlier reason
    finally:
        await history.close()
