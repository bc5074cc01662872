"""The review workflow against the real PostgreSQL, broker and Redis, through the HTTP API of
the real `guardstream review` process."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis

from guardstream.contracts.events import (
    AssignmentEvent,
    SlaEvent,
    SlaEventKind,
    Source,
    Verdict,
    utcnow,
)
from guardstream.contracts.text import normalise
from guardstream.contracts.topics import Topic
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import Role, task_id
from guardstream.verdict.archive import Archive
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache, VerdictKey
from tests.integration.review.conftest import (
    Console,
    contested,
    new_test_post,
    produce,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def seed(console: Console, n: int, tenant: str = "acme", **kw: object) -> list[str]:
    """n contested posts (post + review decision) → their task ids, once the tasks exist."""
    items = []
    ids = []
    for _ in range(n):
        post = new_test_post(tenant)
        decision = contested(post, **kw)  # type: ignore[arg-type]
        items += [(Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)]
        ids.append(task_id(post.tenant, post.post_id, decision.policy))
    before = (await console.sql("SELECT count(*) AS n FROM tasks"))[0]["n"]
    await produce(console.settings, *items)
    await console.wait_tasks(before + n)
    return ids


async def test_review_decisions_become_one_task_each_with_text_and_sla(console: Console) -> None:
    post = new_test_post()
    decision = contested(post)
    bad = b'{"schema_version": "1.0", "event_id": "x"}'
    # The duplicate (a replay) and a malformed record must not create tasks.
    await produce(
        console.settings,
        (Topic.REVIEW, decision, post.post_id),
        (Topic.REVIEW, decision, post.post_id),
        (Topic.REVIEW, bad, "junk"),
        (Topic.POSTS, post, post.post_id),
    )
    await console.wait_tasks(1)
    dlq = await read_topic(console.settings, Topic.DLQ, 1)
    assert dlq and dlq[0]["reason"] == "invalid_schema"
    assert dlq[0]["origin"]["topic"] == console.names[Topic.REVIEW]
    rows = await console.sql("SELECT * FROM tasks")
    assert len(rows) == 1
    task = rows[0]
    assert task["post_id"] == post.post_id and task["tenant"] == "acme"
    assert task["model_verdict"] == "controversial" and task["confidence"] == 0.55
    assert list(task["categories"]) == ["Politically Sensitive Topics"]
    # The default pack's SLA: 2 hours from the decision.
    assert abs((task["deadline"] - decision.decided_at).total_seconds() - 7200) < 1
    await console.add_reviewer("alice", ("acme",))
    for _ in range(50):  # the post may land after the task; its text and language follow
        async with console.client("alice") as http:
            body = (await http.get(f"/api/v1/tasks/{task['task_id']}")).json()
        if body.get("text") and body.get("lang"):
            break
        await asyncio.sleep(0.1)
    assert body["text"] == post.text and body["lang"] == "zh"


async def seed_by_deadline(console: Console, n: int) -> list[str]:
    """n contested posts decided a minute apart, produced in a shuffled order → their task ids
    from the earliest SLA deadline to the latest, once the tasks exist."""
    ages = [60 * (n - i) for i in range(n)]  # the first is the oldest: earliest deadline
    posts = [new_test_post() for _ in ages]
    decisions = [contested(post, decided_ago_s=age) for post, age in zip(posts, ages, strict=True)]
    items = [
        item
        for post, decision in zip(posts, decisions, strict=True)
        for item in ((Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id))
    ]
    pairs = [items[i : i + 2] for i in range(0, len(items), 2)]
    random.Random(25).shuffle(pairs)  # arrival order is not deadline order
    await produce(console.settings, *[item for pair in pairs for item in pair])
    await console.wait_tasks(n)
    return [task_id(p.tenant, p.post_id, d.policy) for p, d in zip(posts, decisions, strict=True)]


async def test_two_reviewers_never_claim_the_same_task(console: Console) -> None:
    by_deadline = await seed_by_deadline(console, 20)
    names = [f"r{i:02d}" for i in range(21)]
    for name in names:
        await console.add_reviewer(name, ("acme",))

    async def claim(name: str) -> str | None:
        async with console.client(name) as http:
            response = await http.post("/api/v1/tasks/claim")
            assert response.status_code == 200, response.text
            body = response.json()
            return body["task_id"] if body else None

    # 16 reviewers at once: 16 different tasks, and they are the 16 earliest deadlines.
    claimed = await asyncio.gather(*(claim(n) for n in names[:16]))
    assert None not in claimed and len(set(claimed)) == 16, claimed
    assert set(claimed) == set(by_deadline[:16])
    rows = await console.sql("SELECT task_id, assignee FROM tasks WHERE state = 'assigned'")
    assert {r["task_id"]: r["assignee"] for r in rows} == dict(
        zip(claimed, names[:16], strict=True)
    )
    # A second claim returns the task the reviewer already holds (one claim each by default).
    assert await claim(names[0]) == claimed[0]
    # One at a time, the rest go exactly in deadline order; then there is nothing left.
    assert [await claim(n) for n in names[16:20]] == by_deadline[16:]
    assert await claim(names[20]) is None


async def test_invalid_submissions_are_refused_and_store_nothing(console: Console) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("alice", ("acme",))
    outbox_before = (await console.sql("SELECT count(*) AS n FROM outbox"))[0]["n"]
    tags = ["地域攻击"]
    cases = [
        ({"outcome": "correct", "verdict": "unsafe", "tags": tags}, "reason"),
        ({"outcome": "correct", "verdict": "unsafe", "reason": "x" * 51, "tags": tags}, "reason"),
        ({"outcome": "confirm", "tags": tags}, "reason"),  # the default pack: always
        ({"outcome": "confirm", "reason": " ", "tags": tags}, "reason"),
        ({"outcome": "confirm", "reason": "a\x00b", "tags": tags}, "reason"),
        ({"outcome": "confirm", "reason": "a\x85b", "tags": tags}, "reason"),
        ({"outcome": "confirm", "reason": "理" * 51, "tags": tags}, "reason"),
        ({"outcome": "confirm", "reason": "同意模型判断", "tags": []}, "tags"),
        ({"outcome": "confirm", "reason": "同意模型判断", "tags": ["made-up"]}, "tags"),
        (
            {"outcome": "correct", "verdict": "controversial", "reason": "r", "tags": tags},
            "verdict",
        ),
    ]
    async with console.client("alice") as http:
        for body, field in cases:
            response = await http.post(f"/api/v1/tasks/{tid}/decision", json=body)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == field and response.json()["detail"]
        response = await http.post(f"/api/v1/tasks/{tid}/decision", json={"outcome": "perhaps"})
        assert response.status_code == 422
        # A lone surrogate cannot be sent as UTF-8: JSON's escape carries it.
        response = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            content='{"outcome": "confirm", "reason": "a\\ud800", "tags": ["地域攻击"]}',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422 and response.json()["field"] == "reason"
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0
    assert (await console.sql("SELECT state FROM tasks"))[0]["state"] == "pending"
    assert (await console.sql("SELECT count(*) AS n FROM outbox"))[0]["n"] == outbox_before


async def test_a_correction_is_published_actioned_and_overrides_the_cache(
    console: Console,
) -> None:
    post = new_test_post()
    decision = contested(post)
    await produce(
        console.settings, (Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)
    )
    await console.wait_tasks(1)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        claimed = (await http.post("/api/v1/tasks/claim")).json()
        assert claimed["task_id"] == tid
        response = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={
                "outcome": "correct",
                "verdict": "unsafe",
                "reason": "地域歧视,煽动对立",
                "tags": ["地域攻击", "regional attack"],
            },
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["action"] == "block" and result["late"] is False
        again = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["地域攻击"]},
        )
        assert again.status_code == 409  # decided once, never twice

    reviews = await read_topic(console.settings, Topic.REVIEWS, 1)
    assert len(reviews) == 1
    review = reviews[0]
    assert review["post_id"] == post.post_id and review["outcome"] == "correct"
    assert review["verdict"] == "unsafe" and review["model_verdict"] == "controversial"
    assert review["reason"] == "地域歧视,煽动对立"
    assert review["tags"] == ["地域攻击", "regional attack"]
    assert review["reviewer"] == "alice" and review["decision_id"] == decision.decision_id
    blocks = await read_topic(console.settings, Topic.BLOCK, 1)
    assert [b["source"] for b in blocks] == ["human"]
    assert blocks[0]["decision_id"] == result["decision_id"]
    assert blocks[0]["verdict"] == "unsafe" and blocks[0]["content_key"] == decision.content_key
    assignments = await read_topic(console.settings, Topic.ASSIGNMENTS, 1)
    assert assignments[0]["event"] == AssignmentEvent.ASSIGNED.value
    assert assignments[0]["reviewer"] == "alice"

    cache = RedisVerdictCache.from_settings(console.settings)
    try:
        for _ in range(50):  # written by the relay; a slow Redis is a miss here, so ask again
            found = await cache.get_many([VerdictKey(decision.content_key, decision.tenant)])
            if found:
                break
            await asyncio.sleep(0.1)
        [hit] = found.values()
    finally:
        await cache.close()
    assert hit.source.value == "human" and hit.verdict is Verdict.UNSAFE

    audit = await console.sql(
        "SELECT actor, detail FROM audit WHERE action = 'task.decide' AND task_id = $1", tid
    )
    assert len(audit) == 1 and audit[0]["actor"] == "alice"
    assert '"from": "controversial"' in audit[0]["detail"]
    assert '"to": "unsafe"' in audit[0]["detail"]
    assert post.text not in str(audit[0]["detail"])
    # Everything queued was sent (the relay marks rows once the broker acknowledged them).
    for _ in range(50):
        unsent = await console.sql("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
        if unsent[0]["n"] == 0:
            break
        await asyncio.sleep(0.1)
    assert unsent[0]["n"] == 0

    # ... including the feedback sample: the review, archived for training.
    (sample,) = Archive(console.settings.feedback.dir).read()
    assert sample.sample_id == review["review_id"]
    assert sample.text == normalise(post.text)  # as the model saw it (default pack: no prefix)
    assert (sample.pred_verdict, sample.human_verdict) == (Verdict.CONTROVERSIAL, Verdict.UNSAFE)
    assert sample.human_reason == "地域歧视,煽动对立"
    assert sample.content_key == decision.content_key


async def test_an_expired_task_stays_decidable_and_a_late_unsafe_blocks(console: Console) -> None:
    post = new_test_post()
    decision = contested(post, decided_ago_s=7300)  # past the 2-hour deadline
    expired = SlaEvent(
        event_id="sla-" + decision.decision_id,
        produced_at=utcnow(),
        sla_event_id="sla-" + decision.decision_id,
        post_id=post.post_id,
        tenant=post.tenant,
        decision_id=decision.decision_id,
        kind=SlaEventKind.EXPIRED,
        deadline=decision.decided_at,
        downgrade_decision_id="downgrade-1",
        at=utcnow(),
    )
    # The SLA event may arrive before the task: it waits and is applied.
    await produce(console.settings, (Topic.SLA_EVENTS, expired, post.post_id))
    await asyncio.sleep(0.5)
    await produce(console.settings, (Topic.REVIEW, decision, post.post_id))
    await console.wait_tasks(1)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    rows = await console.sql("SELECT sla, downgrade_decision_id FROM tasks")
    assert rows[0]["sla"] == "expired" and rows[0]["downgrade_decision_id"] == "downgrade-1"
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        queue = (await http.get("/api/v1/queue")).json()
        assert queue["tasks"][0]["sla"] == "expired" and queue["stats"]["expired"] == 1
        assert queue["tasks"][0]["countdown"].startswith("expired")
        response = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={
                "outcome": "correct",
                "verdict": "unsafe",
                "reason": "地域攻击",
                "tags": ["地域攻击"],
            },
        )
    assert response.status_code == 200, response.text
    assert response.json()["late"] is True and response.json()["action"] == "block"
    blocks = await read_topic(console.settings, Topic.BLOCK, 1)
    assert blocks[0]["source"] == "human" and blocks[0]["rule"] == "human_review:late"
    reviews = await read_topic(console.settings, Topic.REVIEWS, 1)
    assert reviews[0]["late"] is True


async def test_round_robin_assignment_and_lock_expiry(console: Console) -> None:
    """Round-robin hands each new task to the idle on-call reviewer assigned longest ago
    (never assigned first, then by id; never the off-call one); a task whose lock expires is
    released and handed to the next reviewer in turn."""
    for name in ("on1", "on2", "on3"):
        await console.add_reviewer(name, ("acme",), on_call=True)
    await console.add_reviewer("off", ("acme",), on_call=False)

    async def assignee(tid: str, other_than: str | None = None) -> str:
        for _ in range(300):
            rows = await console.sql("SELECT state, assignee FROM tasks WHERE task_id = $1", tid)
            if rows[0]["state"] == "assigned" and rows[0]["assignee"] != other_than:
                return str(rows[0]["assignee"])
            await asyncio.sleep(0.1)
        raise AssertionError(f"{tid} was not assigned (again): {rows}")

    # One task at a time, each decided before the next arrives: the turn rotates.
    turns = []
    for _ in range(4):
        [tid] = await seed(console, 1)
        turns.append(await assignee(tid))
        async with console.client(turns[-1]) as http:
            decided = await http.post(
                f"/api/v1/tasks/{tid}/decision",
                json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
            )
            assert decided.status_code == 200, decided.text
    assert turns == ["on1", "on2", "on3", "on1"]

    # The next task goes to on2 (assigned longest ago). Its lock expires: the task is released
    # and handed to on3, the next in turn (on1 had the last one before it).
    [tid] = await seed(console, 1)
    assert await assignee(tid) == "on2"
    await console.sql(
        "UPDATE tasks SET lock_expires_at = now() - interval '1 second' WHERE task_id = $1", tid
    )
    assert await assignee(tid, other_than="on2") == "on3"
    history: list[tuple[object, object]] = []
    for _ in range(100):  # the relay publishes the events after their transactions commit
        events = await read_topic(console.settings, Topic.ASSIGNMENTS, 100, within=1)
        history = [(e["event"], e.get("reviewer")) for e in events if e["task_id"] == tid]
        if len(history) >= 3:
            break
    assert history == [("assigned", "on2"), ("released", None), ("assigned", "on3")]
    assert "off" not in {e.get("reviewer") for e in events}


async def test_release_gives_the_task_back(console: Console) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("alice", ("acme",))
    await console.add_reviewer("bob", ("acme",))
    async with console.client("alice") as http:
        assert (await http.post("/api/v1/tasks/claim")).json()["task_id"] == tid
    async with console.client("bob") as http:
        assert (await http.post("/api/v1/tasks/claim")).json() is None
        held = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
        )
        assert held.status_code == 409
        assert (await http.post(f"/api/v1/tasks/{tid}/release")).status_code == 409
    async with console.client("alice") as http:
        released = await http.post(f"/api/v1/tasks/{tid}/release")
        assert released.status_code == 200 and released.json()["state"] == "pending"
    async with console.client("bob") as http:
        assert (await http.post("/api/v1/tasks/claim")).json()["task_id"] == tid


async def test_senior_qa_and_agreement(console: Console) -> None:
    ids = await seed(console, 2)
    await console.add_reviewer("alice", ("acme",))
    await console.add_reviewer("sue", ("acme",), role=Role.SENIOR)
    async with console.client("alice") as http:
        for tid in ids:
            r = await http.post(
                f"/api/v1/tasks/{tid}/decision",
                json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
            )
            assert r.status_code == 200, r.text
        confirm = {"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]}
        assert (await http.post(f"/api/v1/tasks/{ids[0]}/qa", json=confirm)).status_code == 403
        assert (await http.get("/api/v1/qa/agreement")).status_code == 403
    async with console.client("sue") as http:
        agree = await http.post(
            f"/api/v1/tasks/{ids[0]}/qa",
            json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
        )
        assert agree.status_code == 200, agree.text
        differ = await http.post(
            f"/api/v1/tasks/{ids[1]}/qa",
            json={
                "outcome": "correct",
                "verdict": "safe",
                "reason": "讽刺,非攻击",
                "tags": ["政治隐喻"],
            },
        )
        assert differ.status_code == 200, differ.text
        figures = (await http.get("/api/v1/qa/agreement")).json()
    assert figures == {"compared": 2, "agreed": 1, "rate": 0.5}
    # The same figure as a gauge for Prometheus (refreshed by the process's timer).
    for _ in range(100):
        if review_metrics.qa_agreement_by_tenant.get("acme") == 0.5:
            break
        await asyncio.sleep(0.1)
    assert review_metrics.qa_agreement_by_tenant.get("acme") == 0.5
    reviews = await read_topic(console.settings, Topic.REVIEWS, 4)
    assert sorted(r["stage"] for r in reviews) == ["first", "first", "qa", "qa"]
    # QA does not re-action: only the two first-stage decisions reached the action topics.
    allows = await read_topic(console.settings, Topic.ALLOW, 3, within=3)
    assert len(allows) == 2


async def test_openapi_documents_the_api(console: Console) -> None:
    async with console.client() as http:
        spec = (await http.get("/openapi.json")).json()
    for path in ("/api/v1/queue", "/api/v1/tasks/claim", "/api/v1/tasks/{task_id}/decision"):
        assert path in spec["paths"]


async def test_human_verdicts_survive_a_redis_flush(console: Console, redis_url: str) -> None:
    """RELIABILITY 11: the cache loses everything; the console writes its human verdicts
    again from PostgreSQL, so a repost still gets the reviewer's answer."""
    post = new_test_post()
    decision = contested(post)
    await produce(
        console.settings, (Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)
    )
    await console.wait_tasks(1)
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        tid = task_id(post.tenant, post.post_id, decision.policy)
        response = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={
                "outcome": "correct",
                "verdict": "unsafe",
                "reason": "地域歧视",
                "tags": ["地域攻击"],
            },
        )
        assert response.status_code == 200, response.text

    cache = RedisVerdictCache.from_settings(console.settings)
    client = redis.Redis.from_url(redis_url)
    key = VerdictKey(decision.content_key, decision.tenant)
    try:

        async def human_entry() -> CachedVerdict | None:
            for _ in range(100):
                found = (await cache.get_many([key])).get(key)
                if found is not None and found.source is Source.HUMAN:
                    return found
                await asyncio.sleep(0.1)
            return None

        assert await human_entry() is not None
        # This namespace's keys gone, as after FLUSHALL (other tests share this Redis).
        keys = list(client.scan_iter(f"{console.settings.cache_prefix}*"))
        assert keys
        client.delete(*keys)
        assert (await cache.get_many([key])) == {}
        restored = await human_entry()  # the relay checks every assign interval (0.2 s here)
        assert restored is not None
        assert restored.verdict is Verdict.UNSAFE
    finally:
        await cache.close()
        client.close()
