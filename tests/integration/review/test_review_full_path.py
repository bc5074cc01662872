"""The full human loop on the real broker, Redis, PostgreSQL and the vLLM engine with the tiny
checkpoint: a post goes through triage, the scorer finds it controversial and sends it to
review, a reviewer corrects it in the console API, the human decision reaches the action topic
(and the queue's average response time is exactly that task's), and a repost of the same
content is blocked by triage from the sticky human verdict - for its own tenant only: another
tenant's post with the same post_id and text is scored and reviewed as its own. Then the
average response time's one-hour window, to the second, on the console page."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from guardstream.contracts.events import Decision, ScoreRequest, utcnow
from guardstream.contracts.topics import Topic
from guardstream.review.logic import task_id
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.integration.conftest import in_process
from tests.integration.review.conftest import (
    PASSWORD,
    Console,
    contested,
    new_test_post,
    produce,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Taught to the tiny checkpoint as Controversial [Politically Sensitive Topics].
TEXT = "你怎么看待那场有争议的选举结果?"


async def review_decision(console: Console, post_id: str, tenant: str) -> Decision:
    """The decision the scorer sent to actions.review for this post."""
    for _ in range(120):
        for raw in await read_topic(console.settings, Topic.REVIEW, 10, within=1):
            if raw["post_id"] == post_id and raw["tenant"] == tenant:
                return Decision.model_validate(raw)
    raise AssertionError(f"no review decision for {tenant}/{post_id}")


async def test_post_to_review_to_human_decision_to_action_and_cache(
    console: Console, engine: VllmGuardEngine
) -> None:
    settings = console.settings
    async with in_process(settings, engine, "triage", "scorer") as pipeline:
        first = new_test_post(text=TEXT)
        await produce(settings, (Topic.POSTS, first, first.post_id))
        # The scorer's part, by the model: the real score request, judged controversial.
        [raw] = await read_topic(settings, Topic.SCORE_REQUESTS, 1, within=60)
        request = ScoreRequest.model_validate(raw)
        assert request.post_id == first.post_id
        contested = await review_decision(console, first.post_id, "acme")
        assert contested.source.value == "model" and contested.model == engine.model_id
        assert contested.verdict.value == "controversial" and contested.action.value == "review"
        assert contested.categories == ("Politically Sensitive Topics",)
        assert contested.content_key == request.content_key

        await console.wait_tasks(1)
        tid = task_id(first.tenant, first.post_id, contested.policy)
        await console.add_reviewer("alice", ("acme",))
        async with console.client("alice") as http:
            queue = (await http.get("/api/v1/queue")).json()
            assert [t["task_id"] for t in queue["tasks"]] == [tid]
            for _ in range(50):
                item = (await http.get(f"/api/v1/tasks/{tid}")).json()
                if item.get("text"):
                    break
                await asyncio.sleep(0.1)
            assert item["text"] == TEXT and item["model_verdict"] == "controversial"
            decided = await http.post(
                f"/api/v1/tasks/{tid}/decision",
                json={
                    "outcome": "correct",
                    "verdict": "unsafe",
                    "reason": "把选举结果当作攻击对象,煽动对立",
                    "tags": ["政治隐喻"],
                },
            )
            assert decided.status_code == 200, decided.text
            # The figures right after a decision count after it (issue 19: no stale copy).
            stats = (await http.get("/api/v1/stats")).json()

        [raw] = await read_topic(settings, Topic.BLOCK, 1)
        human = Decision.model_validate(raw)
        assert human.source.value == "human" and human.post_id == first.post_id
        assert human.content_key == request.content_key
        # The average response time over the one task decided in the last hour: exactly its
        # time from the scorer's decision (the task's creation) to the human decision.
        [times] = await console.sql("SELECT created_at, decided_at FROM tasks")
        assert (times["created_at"], times["decided_at"]) == (
            contested.decided_at,
            human.decided_at,
        )
        took = (human.decided_at - contested.decided_at).total_seconds()
        assert stats["queue_depth"] == 0
        assert stats["avg_response_s"] == pytest.approx(took, abs=1e-6), (stats, took)

        # A repost of the same content: triage answers from the human verdict (sticky).
        repost = new_test_post(text=TEXT)
        await produce(settings, (Topic.POSTS, repost, repost.post_id))
        blocks: list[dict[str, object]] = []
        for _ in range(100):
            blocks = await read_topic(settings, Topic.BLOCK, 2, within=1)
            if len(blocks) == 2:
                break
        again = next(b for b in blocks if b["post_id"] == repost.post_id)
        assert again["source"] == "cache" and again["verdict"] == "unsafe"
        assert again["rule"] == "human_verdict" and "human" in str(again["reason"])
        # Only the first post was ever sent to scoring or review.
        assert len(await read_topic(settings, Topic.SCORE_REQUESTS, 2, within=2)) == 1
        assert pipeline.scorer.counts["scored"] == 1

        # Tenant beta: the same text under the very same post_id (and event id) is beta's own
        # post. acme's human verdict and its reason do not decide it: it is scored ...
        stranger = first.model_copy(update={"tenant": "beta"})
        await produce(settings, (Topic.POSTS, stranger, stranger.post_id))
        raws = await read_topic(settings, Topic.SCORE_REQUESTS, 2, within=60)
        assert [(r["post_id"], r["tenant"]) for r in raws] == [
            (first.post_id, "acme"),
            (first.post_id, "beta"),
        ]
        # ... judged controversial by the model again, and gets a task of its own, with its
        # own text.
        theirs_decided = await review_decision(console, first.post_id, "beta")
        assert theirs_decided.source.value == "model"
        assert theirs_decided.verdict.value == "controversial"
        await console.wait_tasks(2)
        await console.add_reviewer("bob", ("beta",))
        theirs = task_id("beta", first.post_id, contested.policy)
        async with console.client("bob") as http:
            queue = (await http.get("/api/v1/queue")).json()
            assert [t["task_id"] for t in queue["tasks"]] == [theirs]
            for _ in range(50):
                item = (await http.get(f"/api/v1/tasks/{theirs}")).json()
                if item.get("text"):
                    break
                await asyncio.sleep(0.1)
            assert item["text"] == TEXT and item["tenant"] == "beta"
            assert (await http.get(f"/api/v1/tasks/{tid}")).status_code in (403, 404)
        beta_decisions = [
            d
            for topic in (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)
            for d in await read_topic(settings, topic, 10, within=1)
            if d["tenant"] == "beta" and d["source"] != "model"
        ]
        assert beta_decisions == []  # nothing from acme's cache or console reached beta


async def test_average_response_time_is_the_last_hours_mean_on_the_page(
    console: Console, page: object
) -> None:
    """Known response times: a task decided two hours ago (outside the window), one created
    two hours ago and decided half an hour ago, one decided a minute after it arrived. The
    figure is the mean of the last two, 45m 30s, in the API and in the console's `#avg`."""
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    now = utcnow().replace(microsecond=0)
    hour = timedelta(hours=1)
    # (created, decided): a response of 3600 s, then 5400 s and 60 s (mean 2730 s)
    times = [
        (now - 3 * hour, now - 2 * hour),
        (now - 2 * hour, now - hour / 2),
        (now - timedelta(minutes=10), now - timedelta(minutes=9)),
    ]
    posts = [new_test_post() for _ in times]
    decisions = [  # the task is created at its decision's `decided_at`
        contested(post).model_copy(update={"decided_at": created})
        for post, (created, _) in zip(posts, times, strict=True)
    ]
    await produce(
        console.settings,
        *[(Topic.REVIEW, d, d.post_id) for d in decisions],
    )
    await console.wait_tasks(len(times))
    await console.add_reviewer("alice", ("acme",))
    tasks = console.review.services.tasks
    try:
        async with console.client("alice") as http:
            for decision, (_, decided) in zip(decisions, times, strict=True):
                tasks.now = lambda at=decided: at  # the service's clock: decided at `decided`
                tid = task_id(decision.tenant, decision.post_id, decision.policy)
                response = await http.post(
                    f"/api/v1/tasks/{tid}/decision",
                    json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
                )
                assert response.status_code == 200, response.text
    finally:
        tasks.now = utcnow
    rows = await console.sql("SELECT created_at, decided_at FROM tasks ORDER BY created_at")
    assert [(r["created_at"], r["decided_at"]) for r in rows] == times
    async with console.client("alice") as http:
        for _ in range(50):  # the figures are refreshed behind the page, within a second
            stats = (await http.get("/api/v1/stats")).json()
            if stats["avg_response_s"] is not None:
                break
            await asyncio.sleep(0.1)
    assert stats["avg_response_s"] == 2730.0, stats

    await page.goto(console.base_url + "/console/login")
    await page.fill("#reviewer", "alice")
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await expect(page.locator("#depth")).to_have_text("0")
    await expect(page.locator("#avg")).to_have_text("45m 30s")
