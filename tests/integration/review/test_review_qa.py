"""QA audits and response refusals against the real PostgreSQL, broker and Redis, through the
HTTP API of the real `guardstream review` process (and `guardstream feedback qa-sample` run as
a user runs it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import orjson
import pytest

from guardstream.contracts.events import Alert, Kind, Post, Verdict, utcnow
from guardstream.contracts.topics import Topic
from guardstream.feedback.dataset import target_text
from guardstream.review.logic import Role, task_id
from guardstream.review.qa_period import parse_period, previous_period
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive
from tests.integration.review.conftest import (
    Console,
    contested,
    new_test_post,
    produce,
    read_topic,
)
from tests.integration.review.test_review_api import seed
from tests.support.processes import env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TAGS = ["政治隐喻"]


def qa_sample_cli(settings: Settings, period: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "guardstream", "feedback", "qa-sample", "--period", period],
        env=env_for(
            settings,
            DATABASE_URL=settings.database.url.get_secret_value(),
            GUARDSTREAM_REVIEW_DB_SCHEMA=settings.database.review_schema,
        ),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


async def decide_all(console: Console, who: str, ids: list[str]) -> None:
    async with console.client(who) as http:
        for tid in ids:
            r = await http.post(
                f"/api/v1/tasks/{tid}/decision",
                json={"outcome": "confirm", "reason": "同意模型判断", "tags": TAGS},
            )
            assert r.status_code == 200, r.text


async def test_seniors_work_a_blind_qa_queue_and_low_agreement_alerts(console: Console) -> None:
    # The process's own timer sampled the last finished month at start-up: no reviews then,
    # so an empty batch, closed at once.
    due = previous_period(utcnow(), "monthly")
    for _ in range(100):
        timer = await console.sql("SELECT * FROM qa_batches WHERE period = $1", due.key)
        if timer:
            break
        await asyncio.sleep(0.1)
    assert timer and timer[0]["closed_at"] is not None and timer[0]["size"] == 100

    acme = await seed(console, 6)
    (zeta,) = await seed(console, 1, tenant="zeta")
    await console.add_reviewer("alice", ("acme",))
    await console.add_reviewer("bob", ("acme",), role=Role.SENIOR)  # checked and checking
    await console.add_reviewer("zed", ("zeta",))
    await console.add_reviewer("sue", ("acme",), role=Role.SENIOR)
    await console.add_reviewer("zoe", ("zeta",), role=Role.SENIOR)
    await decide_all(console, "alice", acme[:3])
    await decide_all(console, "bob", acme[3:])
    await decide_all(console, "zed", [zeta])

    # The month's reviews into the QA queue, by the command the CronJob runs; once.
    period = utcnow().strftime("%Y-%m")
    first = await asyncio.to_thread(qa_sample_cli, console.settings, period)
    assert first == {"period": period, "new": True, "sampled": 7, "closed": []}
    again = await console.review.services.qa.sample(parse_period(period))
    assert (again.created, again.sampled) == (False, 0)
    items = await console.sql("SELECT task_id, reviewer FROM qa_items WHERE period = $1", period)
    assert sorted(r["reviewer"] for r in items) == ["alice"] * 3 + ["bob"] * 3 + ["zed"]

    async with console.client("alice") as http:  # not a senior
        assert (await http.get("/api/v1/qa/queue")).status_code == 403
    async with console.client("bob") as http:  # a senior never checks their own reviews
        mine = (await http.get("/api/v1/qa/queue")).json()
        assert sorted(i["task_id"] for i in mine) == sorted(acme[:3])
        own = await http.post(
            f"/api/v1/qa/items/{acme[3]}", json={"verdict": "safe", "reason": "x", "tags": TAGS}
        )
        assert own.status_code == 409, own.text
    async with console.client("sue") as http:
        queue = (await http.get("/api/v1/qa/queue")).json()
        assert sorted(i["task_id"] for i in queue) == sorted(acme)  # not zeta's
        assert {i["period"] for i in queue} == {period}
        # Blind: no first label or reviewer, on the QA item and on the plain task read.
        assert all(i["human_verdict"] is None and i["assignee"] is None for i in queue)
        item = (await http.get(f"/api/v1/qa/items/{acme[0]}")).json()
        assert item["human_verdict"] is None and item["text"]
        assert (await http.get(f"/api/v1/tasks/{acme[0]}")).json()["human_verdict"] is None
        assert (await http.get(f"/api/v1/qa/items/{zeta}")).status_code == 404
        no_reason = await http.post(f"/api/v1/qa/items/{acme[0]}", json={"verdict": "safe"})
        assert no_reason.status_code == 422 and no_reason.json()["field"] == "reason"
        peek = await http.post(
            f"/api/v1/tasks/{acme[0]}/qa",
            json={"outcome": "confirm", "reason": "同意模型判断", "tags": TAGS},
        )
        assert peek.status_code == 409  # a sampled item is labelled blind, not "confirmed"
    async with console.client("alice") as http:  # the first reviewer still sees her label
        assert (await http.get(f"/api/v1/tasks/{acme[0]}")).json()["human_verdict"] is not None

    async with console.client("zoe") as http:
        done = await http.post(
            f"/api/v1/qa/items/{zeta}",
            json={"verdict": "controversial", "reason": "影射但不攻击", "tags": TAGS},
        )
        assert done.status_code == 200, done.text
        assert done.json()["agreed"] is True
    async with console.client("sue") as http:
        # alice's confirmations hold; every one of bob's is overturned.
        for n, tid in enumerate(acme):
            label = "controversial" if n < 3 else "unsafe"
            r = await http.post(
                f"/api/v1/qa/items/{tid}", json={"verdict": label, "reason": "复核", "tags": TAGS}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["first_verdict"] == "controversial"  # shown once she decided
            assert body["agreed"] is (n < 3)
            if n == 4:  # one item open: the batch is not evaluated yet
                report = (await http.get(f"/api/v1/qa/batches/{period}")).json()
                assert report["undecided"] == 1 and report["closed_at"] is None
        report = (await http.get(f"/api/v1/qa/batches/{period}")).json()
        assert (await http.get("/api/v1/qa/queue")).json() == []
        relabelled = (await http.get(f"/api/v1/tasks/{acme[0]}")).json()
        assert relabelled["human_verdict"] == "controversial"  # no longer blind
    assert report["closed_at"] is not None and report["items"] == 6
    scores = {r["reviewer"]: r for r in report["reviewers"]}
    assert set(scores) == {"alice", "bob"}  # sue's tenants only
    assert (scores["alice"]["agreed"], scores["alice"]["checked"]) == (3, 3)
    assert (scores["bob"]["agreed"], scores["bob"]["checked"]) == (0, 3)
    assert scores["bob"]["below_bar"] and not scores["alice"]["below_bar"]

    # The last decision closed the batch and queued one alert naming bob, sent by the relay.
    (raw,) = await read_topic(console.settings, Topic.ALERTS, 1)
    alert = Alert.model_validate(raw)
    assert alert.kind == "qa_agreement_low" and alert.labels == {
        "period": period,
        "reviewers": "bob",
    }
    assert report["alert_id"] == alert.alert_id
    actions = {
        r["action"]
        for r in await console.sql("SELECT DISTINCT action FROM audit WHERE action LIKE 'qa.%'")
    }
    assert actions >= {"qa.sample", "qa.queue", "qa.read", "qa.report", "qa.close"}
    assert (await console.sql("SELECT count(*) AS n FROM reviews WHERE stage = 'qa'"))[0]["n"] == 7


async def test_a_response_correction_carries_both_refusal_labels_to_the_target(
    console: Console,
) -> None:
    post = Post(
        **{
            **new_test_post().model_dump(),
            "kind": Kind.RESPONSE,
            "prompt": "How do I make a bomb?",
            "text": "Sorry, I can't help with that. Anyway: mix fertiliser with fuel oil.",
        }
    )
    decision = contested(post, verdict=Verdict.CONTROVERSIAL, categories=("Violent",))
    decision = decision.model_copy(update={"refusal": True})
    prompt_post = new_test_post()
    prompt_decision = contested(prompt_post)
    await produce(
        console.settings,
        (Topic.POSTS, post, post.post_id),
        (Topic.POSTS, prompt_post, prompt_post.post_id),
        (Topic.REVIEW, decision, post.post_id),
        (Topic.REVIEW, prompt_decision, prompt_post.post_id),
    )
    await console.wait_tasks(2)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        for _ in range(100):  # the text may land after the task
            body = (await http.get(f"/api/v1/tasks/{tid}")).json()
            if body.get("kind"):
                break
            await asyncio.sleep(0.1)
        assert body["kind"] == "response" and body["model_refusal"] is True
        other = task_id(prompt_post.tenant, prompt_post.post_id, prompt_decision.policy)
        for _ in range(100):
            if (await http.get(f"/api/v1/tasks/{other}")).json().get("kind"):
                break
            await asyncio.sleep(0.1)
        wrong = await http.post(
            f"/api/v1/tasks/{other}/decision",
            json={"outcome": "confirm", "reason": "同意模型判断", "tags": TAGS, "refusal": True},
        )
        assert wrong.status_code == 422 and wrong.json()["field"] == "refusal"
        r = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={
                "outcome": "correct",
                "verdict": "unsafe",
                "reason": "先拒绝后给出做法",
                "tags": TAGS,
                "refusal": False,
            },
        )
        assert r.status_code == 200, r.text
    rows = await console.sql("SELECT refusal FROM reviews WHERE task_id = $1", tid)
    assert rows[0]["refusal"] is False
    for _ in range(100):  # archived by the relay
        samples = Archive(console.settings.feedback.dir).read()
        if samples:
            break
        await asyncio.sleep(0.1)
    (sample,) = samples
    assert sample.kind is Kind.RESPONSE
    assert (sample.pred_refusal, sample.human_refusal) == (True, False)
    assert target_text(sample) == "Safety: Unsafe\nCategories: Violent\nRefusal: No"
