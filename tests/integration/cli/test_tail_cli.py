"""`guardstream tail` as a user runs it (a child process), against the real broker: it follows
the action, DLQ, review, alert and shadow topics of its namespace, filters by post id, tenant
and verdict, prints one JSON object a line (`--json`) or one whole line a record (ids never
cut), shows a record that is no valid event instead of dying on it, and stops with exit 0 on
Ctrl-C and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiokafka import ConsumerRecord

from guardstream.contracts.events import (
    Action,
    Alert,
    AlertSeverity,
    Decision,
    Post,
    Review,
    ReviewOutcome,
    ShadowRecord,
    Verdict,
    utcnow,
)
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.runtime.kafka import dlq_record, ensure_topics
from guardstream.runtime.settings import Settings
from tests.integration.cli.conftest import guardstream
from tests.support.processes import env_for
from tests.support.topics import produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = uuid.uuid4().hex


def decision(post: Post, verdict: Verdict, action: Action) -> Decision:
    now = utcnow()
    return Decision(
        event_id=uuid.uuid4().hex,
        produced_at=now,
        decision_id=uuid.uuid4().hex,
        post_id=post.post_id,
        post_event_id=post.event_id,
        tenant=post.tenant,
        verdict=verdict,
        action=action,
        categories=("Violent",) if verdict is Verdict.UNSAFE else (),
        confidence=0.9,
        reason="Qwen3Guard: a reason\nover two lines",
        source="model",  # type: ignore[arg-type]
        model="tiny",
        policy="default@1",
        content_key=KEY,
        decided_at=now,
    )


def review(post: Post) -> Review:
    now = utcnow()
    return Review(
        event_id=uuid.uuid4().hex,
        produced_at=now,
        review_id=uuid.uuid4().hex,
        task_id=uuid.uuid4().hex,
        post_id=post.post_id,
        post_event_id=post.event_id,
        tenant=post.tenant,
        decision_id=uuid.uuid4().hex,
        content_key=KEY,
        policy="default@1",
        outcome=ReviewOutcome.CORRECT,
        verdict=Verdict.SAFE,
        reason="satire",
        tags=("误判",),
        reviewer="alice",
        model_verdict=Verdict.UNSAFE,
        reviewed_at=now,
    )


def alert(post: Post) -> Alert:
    now = utcnow()
    return Alert(
        event_id=uuid.uuid4().hex,
        produced_at=now,
        alert_id=uuid.uuid4().hex,
        kind="sla_expired",
        severity=AlertSeverity.CRITICAL,
        tenant=post.tenant,
        post_id=post.post_id,
        summary="review SLA expired",
        raised_at=now,
    )


def shadow(post: Post) -> ShadowRecord:
    now = utcnow()
    return ShadowRecord(
        event_id=uuid.uuid4().hex,
        produced_at=now,
        post_id=post.post_id,
        post_event_id=post.event_id,
        tenant=post.tenant,
        content_key=KEY,
        policy="default@1",
        model="tiny",
        serving_verdict=Verdict.UNSAFE,
        candidate_adapter="acme-v2",
        candidate_verdict=Verdict.SAFE,
        received_at=now,
        serving_decided_at=now,
        candidate_decided_at=now,
    )


def dead_letter(settings: Settings, post: Post) -> bytes:
    """What triage writes to the DLQ for `post` (read from posts.v1 at partition 0 offset 7)."""
    raw = post.to_json()
    record = ConsumerRecord(
        TopicNames(settings.namespace)[Topic.POSTS], 0, 7, 0, 0,
        post.post_id.encode(), raw, None, 0, len(raw), [],
    )  # fmt: skip
    return dlq_record(
        record, consumer="triage", reason="empty_text", detail="empty", attempts=1,
        max_payload=1 << 20,
    ).to_json()  # fmt: skip


@asynccontextmanager
async def following(settings: Settings, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`guardstream tail ARGS`, once it says it is following (its positions are fixed)."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "guardstream", "tail", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_for(settings),
    )
    assert proc.stderr is not None
    try:
        said = b""
        while b"following" not in said:
            line = await asyncio.wait_for(proc.stderr.readline(), 120)
            assert line, f"tail ended before following: {said.decode()}"
            said += line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_follows_every_output_topic_filtered_by_tenant_as_json(settings: Settings) -> None:
    await ensure_topics(settings)
    acme, beta = new_post("a", tenant="acme"), new_post("b", tenant="beta")
    async with following(settings, "--json", "--tenant", "acme", "--count", "5") as tail:
        await produce(
            settings,
            (Topic.ALLOW, decision(beta, Verdict.SAFE, Action.ALLOW), beta.post_id),
            (Topic.BLOCK, decision(acme, Verdict.UNSAFE, Action.BLOCK), acme.post_id),
            (Topic.REVIEWS, review(acme), acme.post_id),
            (Topic.ALERTS, b"{not json", "k"),  # no tenant: filtered out, not fatal
            (Topic.ALERTS, alert(acme), "a1"),
            (Topic.SHADOW, shadow(beta), KEY),
            (Topic.SHADOW, shadow(acme), KEY),
            (Topic.DLQ, dead_letter(settings, acme), acme.post_id),
        )
        stdout, stderr = await asyncio.wait_for(tail.communicate(), 120)
    assert tail.returncode == 0, stderr.decode()
    rows = [orjson.loads(line) for line in stdout.splitlines()]
    assert sorted(r["stream"] for r in rows) == ["action", "alert", "dlq", "review", "shadow"]
    assert {(r["post_id"], r["tenant"]) for r in rows} == {(acme.post_id, "acme")}
    names = TopicNames(settings.namespace)
    by_stream = {r["stream"]: r for r in rows}
    assert by_stream["action"]["topic"] == names[Topic.BLOCK]
    assert by_stream["action"]["event"]["verdict"] == "unsafe"
    dead = by_stream["dlq"]["event"]
    assert dead["reason"] == "empty_text" and "payload_b64" not in dead
    assert dead["payload_size"] == len(acme.to_json())


async def test_filters_by_post_id_and_verdict_and_never_cuts_an_id(settings: Settings) -> None:
    await ensure_topics(settings)
    long_id = "p-" + "x" * 60 + "-end"
    wanted = new_post("a", tenant="acme", post_id=long_id)
    other = new_post("b", tenant="acme")
    await produce(
        settings,
        (Topic.ALLOW, decision(wanted, Verdict.SAFE, Action.ALLOW), long_id),
        (Topic.ALLOW, decision(other, Verdict.SAFE, Action.ALLOW), other.post_id),
        (Topic.BLOCK, decision(other, Verdict.UNSAFE, Action.BLOCK), other.post_id),
        (Topic.BLOCK, decision(wanted, Verdict.UNSAFE, Action.BLOCK), long_id),
        (Topic.ALERTS, b"\xff\xfe not an alert", "k"),
    )
    env_narrow = {"COLUMNS": "40"}
    ran = await guardstream(
        settings, "tail", "--from-beginning", "--post-id", long_id, "--verdict", "unsafe",
        "--count", "1", env=env_narrow,
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    (line,) = ran.lines  # one record, on one line however narrow the terminal
    assert long_id in line and "block" in line and "unsafe" in line and "Violent" in line
    assert "over two lines" in line  # the reason's newline does not break the record's line

    broken = await guardstream(
        settings, "tail", "--from-beginning", "--topic", "alert", "--json", "--count", "1"
    )
    assert broken.code == 0, broken.stderr
    (row,) = map(orjson.loads, broken.lines)
    assert row["stream"] == "alert" and row["error"].startswith("invalid_json:")
    assert "event" not in row


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_ctrl_c_and_sigterm_stop_it_cleanly(
    settings: Settings, stop_signal: signal.Signals
) -> None:
    await ensure_topics(settings)
    async with following(settings, "--topic", "action", "--topic", "dlq") as tail:
        tail.send_signal(stop_signal)
        stdout, stderr = await asyncio.wait_for(tail.communicate(), 60)
    assert tail.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr and stdout == b""


async def test_missing_topics_are_named_and_the_exit_is_1(settings: Settings) -> None:
    ran = await guardstream(settings, "tail", "--topic", "shadow")  # no topics created
    assert ran.code == 1
    assert TopicNames(settings.namespace)[Topic.SHADOW] in " ".join(ran.stderr.split())
    assert "Traceback" not in ran.stderr
