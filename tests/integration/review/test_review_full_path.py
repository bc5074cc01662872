"""The full human loop on the real broker, Redis and PostgreSQL: a post goes through triage,
a scorer stand-in (this test, reading the real score request) finds it controversial and sends
it to review, a reviewer corrects it in the console API, the human decision reaches the action
topic, and a repost of the same content is blocked by triage from the sticky human verdict -
for its own tenant only: another tenant's post with the same post_id and text is scored and
reviewed as its own."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from guardstream.contracts.events import Decision, Post, ScoreRequest, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic
from guardstream.policy import load_registry
from guardstream.review.logic import task_id
from guardstream.triage import main as triage_main
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide
from tests.integration.review.conftest import Console, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TEXT = "听说那个地方的人都有病,离他们远点。"


def post_of(text: str) -> Post:
    return Post(
        event_id=uuid.uuid4().hex,
        produced_at=utcnow(),
        post_id=f"p-{uuid.uuid4().hex[:12]}",
        tenant="acme",
        author_id="u-7",
        text=text,
        lang="zh",
        created_at=utcnow(),
    )


def stand_in(request: ScoreRequest) -> Decision:
    """The scorer's part: the real score request, judged controversial → actions.review."""
    pack = load_registry(None).by_ref(request.policy)
    assert pack is not None
    verdict = CachedVerdict(
        verdict=Verdict.CONTROVERSIAL,
        categories=("Unethical Acts",),
        confidence=0.58,
        reason="Qwen3Guard: Controversial [Unethical Acts]",
        source=Source.MODEL,
        model="tiny",
        decided_at=utcnow(),
    )
    return decide(
        verdict,
        Origin.MODEL,
        pack,
        post_id=request.post_id,
        post_event_id=request.post_event_id,
        tenant=request.tenant,
        content_key=request.content_key,
    )


async def test_post_to_review_to_human_decision_to_action_and_cache(console: Console) -> None:
    settings = console.settings
    stop = asyncio.Event()
    triage = asyncio.create_task(triage_main.run(settings, stop))
    try:
        first = post_of(TEXT)
        await produce(settings, (Topic.POSTS, first, first.post_id))
        # The scorer's part: the real score request, judged controversial → actions.review.
        [raw] = await read_topic(settings, Topic.SCORE_REQUESTS, 1, within=60)
        request = ScoreRequest.model_validate(raw)
        assert request.post_id == first.post_id
        contested = stand_in(request)
        assert contested.action.value == "review"
        await produce(settings, (Topic.REVIEW, contested, contested.post_id))

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
                    "reason": "将疾病与地域关联,属污名化",
                    "tags": ["健康污名", "地域攻击"],
                },
            )
            assert decided.status_code == 200, decided.text
            # The figures right after a decision count after it (issue 19: no stale copy).
            stats = (await http.get("/api/v1/stats")).json()
        assert stats["queue_depth"] == 0 and stats["avg_response_s"] is not None

        [human] = await read_topic(settings, Topic.BLOCK, 1)
        assert human["source"] == "human" and human["post_id"] == first.post_id
        assert human["content_key"] == request.content_key

        # A repost of the same content: triage answers from the human verdict (sticky).
        repost = post_of(TEXT)
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

        # Tenant beta: the same text under the very same post_id (and event id) is beta's own
        # post. acme's human verdict and its reason do not decide it: it is scored ...
        stranger = first.model_copy(update={"tenant": "beta"})
        await produce(settings, (Topic.POSTS, stranger, stranger.post_id))
        raws = await read_topic(settings, Topic.SCORE_REQUESTS, 2, within=60)
        assert [(r["post_id"], r["tenant"]) for r in raws] == [
            (first.post_id, "acme"),
            (first.post_id, "beta"),
        ]
        # ... and when contested, gets a task of its own, with its own text.
        await produce(
            settings, (Topic.REVIEW, stand_in(ScoreRequest.model_validate(raws[1])), first.post_id)
        )
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
    finally:
        stop.set()
        await asyncio.wait_for(triage, timeout=60)
