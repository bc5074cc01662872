"""The console beside the real SLA app (`guardstream sla`, its own process): a contested post
nobody reviews is warned about, then expired and downgraded by the SLA app; the console shows
the task as expired, a reviewer's late unsafe still wins (block), and the SLA app records the
late review; a held post (`hold`) past the same deadline is not downgraded and the console
shows it still held. Review SLA of 4 s from a test policy pack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from guardstream.contracts.events import Action
from guardstream.contracts.topics import Topic
from guardstream.review.logic import task_id
from guardstream.runtime.settings import Settings
from tests.integration.review.conftest import (
    PASSWORD,
    Console,
    contested,
    new_test_post,
    produce,
    read_topic,
)
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PACK = """
id: sla-test
version: "1"
tenants: ["*"]
review_sla_s: 4
assignment_sla_s: 2
review_warning_fraction: 0.5
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "packs"
    directory.mkdir()
    (directory / "sla-test.yaml").write_text(PACK)
    return directory


@pytest.fixture
async def review_settings(review_settings: Settings, policy_dir: Path) -> AsyncIterator[Settings]:
    yield review_settings.replace(policy={"dir": policy_dir})


@pytest.fixture
def sla_app(review_settings: Settings, policy_dir: Path, tmp_path: Path) -> Iterator[Process]:
    env = env_for(
        review_settings,
        GUARDSTREAM_POLICY_DIR=str(policy_dir),
        GUARDSTREAM_SLA_TICK_S="0.2",
        GUARDSTREAM_SLA_DATA_DIR=str(tmp_path / "sla-data"),
        GUARDSTREAM_SLA_SESSION_TIMEOUT_S="6",
    )
    proc = Process("sla", env, tmp_path)
    yield proc
    proc.stop()


async def test_expired_by_the_sla_app_then_decided_late(console: Console, sla_app: Process) -> None:
    await asyncio.to_thread(sla_app.start().wait_ready, 120)
    post = new_test_post()
    decision = contested(post, policy="sla-test@1")
    # Beside it, a post a pack held (`hold`): past its deadline it stays held, unpublished.
    kept = new_test_post()
    hold = contested(kept, policy="sla-test@1").model_copy(update={"action": Action.HOLD})
    await produce(
        console.settings,
        (Topic.POSTS, post, post.post_id),
        (Topic.REVIEW, decision, post.post_id),
        (Topic.POSTS, kept, kept.post_id),
        (Topic.REVIEW, hold, kept.post_id),
    )
    await console.wait_tasks(2)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    held = task_id(kept.tenant, kept.post_id, hold.policy)
    rows = await console.sql("SELECT deadline, created_at FROM tasks")
    assert all((r["deadline"] - r["created_at"]).total_seconds() == 4 for r in rows)

    query = "SELECT task_id, sla, downgrade_decision_id, action FROM tasks ORDER BY task_id"
    for _ in range(200):  # the SLA app expires both after 4 s (plus its tick)
        rows = await console.sql(query)
        if all(r["sla"] == "expired" for r in rows):
            break
        await asyncio.sleep(0.1)
    marks = {r["task_id"]: r for r in rows}
    assert marks[tid]["sla"] == "expired" and marks[tid]["downgrade_decision_id"]
    assert (marks[held]["sla"], marks[held]["action"]) == ("expired", "hold")
    assert marks[held]["downgrade_decision_id"] is None  # never downgraded
    downgrades = await read_topic(console.settings, Topic.ALLOW, 2, within=1)
    [downgrade] = downgrades  # the review item's only
    assert downgrade["source"] == "sla_timeout" and downgrade["post_id"] == post.post_id
    assert downgrade["decision_id"] == marks[tid]["downgrade_decision_id"]

    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        item = (await http.get(f"/api/v1/tasks/{tid}")).json()
        assert (item["sla"], item["action"]) == ("expired", "review")
        kept_item = (await http.get(f"/api/v1/tasks/{held}")).json()
        assert (kept_item["sla"], kept_item["action"]) == ("expired", "hold")
        listed = (await http.get("/api/v1/queue")).json()["tasks"]
        assert {t["task_id"]: t["action"] for t in listed} == {tid: "review", held: "hold"}
    # The console's pages say it in words: the held post is still held, the other downgraded.
    async with httpx.AsyncClient(base_url=console.base_url, timeout=30) as http:
        login = await http.post("/console/login", data={"reviewer": "alice", "password": PASSWORD})
        assert login.status_code == 303, login.text
        queue = (await http.get("/console")).text
        held_page = (await http.get(f"/console/tasks/{held}")).text
        review_page = (await http.get(f"/console/tasks/{tid}")).text
    assert queue.count("deadline passed — still held") == 1 and ">expired<" in queue
    assert "deadline passed — still held, unpublished until decided" in held_page
    assert "downgraded" not in held_page and 'data-held="1">deadline passed ' in held_page
    assert "expired — downgraded to safe" in review_page and "still held" not in review_page

    async with console.client("alice") as http:
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
    [block] = await read_topic(console.settings, Topic.BLOCK, 1)
    assert block["source"] == "human" and block["rule"] == "human_review:late"

    kinds: list[str] = []
    for _ in range(100):  # the SLA app saw the late Review
        events = await read_topic(console.settings, Topic.SLA_EVENTS, 7, within=1)
        kinds = sorted(str(e["kind"]) for e in events if e["post_id"] == post.post_id)
        if "late_review" in kinds:
            break
    assert "expired" in kinds and "late_review" in kinds
