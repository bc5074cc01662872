"""The SLA timer against the real broker, run as a user runs it (`guardstream sla`, an OS
process that can be killed). Policies with tiny SLAs: review within 4 s, warning at 2 s,
assignment within 2 s; the timer ticks every 0.2 s.

Lateness asserted here (docs/components/sla.md): while the worker runs, a downgrade is never
early and fires on the first tick at or after its deadline (the worker's `late_downgrades`
stays 0), counted in ticks rather than in seconds of a loaded machine; after a kill -9 items
overdue during the outage fire on the first ticks after recovery.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from guardstream.contracts.events import (
    Action,
    AssignmentEvent,
    Decision,
    Envelope,
    Review,
    ReviewAssignment,
    ReviewOutcome,
    Source,
    Verdict,
    utcnow,
)
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from tests.support.oracle import emission_bound
from tests.support.processes import Process, env_for
from tests.support.sla_oracle import SlaOutcome, assert_sla_invariants, collect_sla

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEADLINE_S = 4
TICK_S = 0.2
BOUND_S = TICK_S + 1.5
PACK = """
id: sla-test
version: "1"
tenants: ["*"]
review_sla_s: 4
assignment_sla_s: 2
review_warning_fraction: 0.5
"""
# The item reviewed in time: an SLA long enough that its review can never race a warning on a
# loaded CI machine; that it left the SLA is shown by the pending count, not by waiting.
PATIENT_PACK = """
id: sla-patient
version: "1"
tenants: ["patient"]
review_sla_s: 60
assignment_sla_s: 60
"""
KEY = "0" * 32


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "packs"
    directory.mkdir()
    (directory / "sla-test.yaml").write_text(PACK)
    (directory / "sla-patient.yaml").write_text(PATIENT_PACK)
    return directory


@pytest.fixture
def sla_process(settings: Settings, policy_dir: Path, tmp_path: Path) -> Iterator[Process]:
    env = env_for(
        settings,
        GUARDSTREAM_POLICY_DIR=str(policy_dir),
        GUARDSTREAM_SLA_TICK_S=str(TICK_S),
        GUARDSTREAM_SLA_DATA_DIR=str(tmp_path / "sla-data"),
        GUARDSTREAM_SLA_SESSION_TIMEOUT_S="6",
    )
    proc = Process("sla", env, tmp_path)
    yield proc
    proc.stop()


def decision(
    post_id: str,
    decided_at: datetime | None = None,
    tenant: str = "acme",
    policy: str = "sla-test@1",
) -> Decision:
    ident = uuid.uuid4().hex
    return Decision(
        event_id=ident,
        produced_at=utcnow(),
        decision_id=ident,
        post_id=post_id,
        post_event_id=f"ev-{post_id}",
        tenant=tenant,
        verdict=Verdict.CONTROVERSIAL,
        action=Action.REVIEW,
        categories=("Politically Sensitive Topics",),
        confidence=0.61,
        reason="Qwen3Guard: Controversial. Sent to review.",
        rule="verdict",
        source=Source.MODEL,
        model="guardstream-tiny",
        policy=policy,
        content_key=KEY,
        decided_at=decided_at or utcnow(),
    )


def review_of(d: Decision, verdict: Verdict = Verdict.SAFE, at: datetime | None = None) -> Review:
    return Review(
        event_id=f"rv-{d.decision_id}",
        produced_at=utcnow(),
        review_id=f"rv-{d.decision_id}",
        task_id=f"task-{d.post_id}",
        post_id=d.post_id,
        post_event_id=d.post_event_id,
        tenant=d.tenant,
        decision_id=d.decision_id,
        content_key=d.content_key,
        policy=d.policy,
        outcome=ReviewOutcome.CONFIRM
        if verdict is Verdict.CONTROVERSIAL
        else ReviewOutcome.CORRECT,
        verdict=verdict,
        reason=None if verdict is Verdict.CONTROVERSIAL else "人工复核",
        tags=("test",),
        reviewer="rev-1",
        model_verdict=Verdict.CONTROVERSIAL,
        reviewed_at=at or utcnow(),
    )


def assignment(d: Decision) -> ReviewAssignment:
    return ReviewAssignment(
        event_id=uuid.uuid4().hex,
        produced_at=utcnow(),
        task_id=f"task-{d.post_id}",
        post_id=d.post_id,
        tenant=d.tenant,
        event=AssignmentEvent.ASSIGNED,
        reviewer="rev-1",
        at=utcnow(),
    )


async def send(settings: Settings, topic: Topic, *events: Envelope, raw: bytes = b"") -> None:
    producer = make_producer(settings, client_id="test-sla")
    await producer.start()
    try:
        name = TopicNames(settings.namespace)[topic]
        for event in events:
            key = getattr(event, "post_id", None) or ""
            await producer.send_and_wait(name, event.to_json(), key=key.encode())
        if raw:
            await producer.send_and_wait(name, raw, key=b"poison")
    finally:
        await producer.stop()


def sla_status(proc: Process) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/status", timeout=5) as response:
        status: dict[str, Any] = orjson.loads(response.read())
    return status


async def start(settings: Settings, proc: Process) -> None:
    await ensure_topics(settings)
    proc.start()
    await asyncio.to_thread(proc.wait_ready, 60)


async def wait_for(settings: Settings, done: object, timeout_s: float = 40) -> SlaOutcome:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        outcome = await collect_sla(settings)
        if done(outcome) or asyncio.get_running_loop().time() > deadline:  # type: ignore[operator]
            return outcome
        await asyncio.sleep(0.5)


async def test_downgrade_at_deadline_reviewed_in_time_is_not(
    settings: Settings, sla_process: Process
) -> None:
    await start(settings, sla_process)
    late, picked = decision("p-late"), decision("p-picked")
    on_time = decision("p-on-time", tenant="patient", policy="sla-patient@1")
    await send(settings, Topic.REVIEW, late, on_time, picked)
    await send(settings, Topic.ASSIGNMENTS, assignment(picked))
    await asyncio.sleep(1)
    status = sla_status(sla_process)
    assert status["pending"] == 3 and status["oldest_pending_age_s"] >= 0.5
    # The same review three times (the console re-publishes on retry): one effect.
    await send(settings, Topic.REVIEWS, *[review_of(on_time, Verdict.UNSAFE)] * 3)

    outcome = await wait_for(
        settings, lambda o: {"p-late", "p-picked"} <= set(o.downgrades), DEADLINE_S + 20
    )
    await asyncio.sleep(DEADLINE_S)  # give a wrong downgrade of p-on-time time to show up
    outcome = await collect_sla(settings)
    assert_sla_invariants(
        outcome, expired={"p-late", "p-picked"}, in_time={"p-on-time"}, max_emissions_per_post=1
    )
    for d in (late, picked):
        got = outcome.decisions[d.post_id]
        # Never early; how late is counted in ticks below, not in seconds of a loaded machine.
        assert got.decided_at >= d.decided_at + timedelta(seconds=DEADLINE_S), got.decided_at
        assert (got.verdict, got.action, got.rule) == (Verdict.SAFE, Action.ALLOW, "review_sla")
        assert (got.post_event_id, got.policy, got.content_key) == (
            d.post_event_id,
            d.policy,
            d.content_key,
        )
        assert "4 s" in got.reason and "SLA" in got.reason
        assert "warning" in outcome.kinds(d.post_id)
        assert "sla_warning" in outcome.alert_kinds(d.post_id)
    assert "assignment_breach" in outcome.alert_kinds("p-late")
    assert "assignment_breach" not in outcome.alert_kinds("p-picked")
    assert outcome.kinds("p-on-time") == set()  # reviewed long before its warning
    assert not outcome.dlq
    status = sla_status(sla_process)
    assert status["pending"] == 0 and status["oldest_pending_age_s"] is None
    assert status["counts"]["expired"] == 2 and status["counts"]["warning"] == 2
    assert status["counts"]["assignment_breach"] == 1 and status["counts"]["dlq"] == 0
    assert 0.5 <= status["avg_review_response_s"] <= 5  # p-on-time: reviewed ~1 s in
    assert 0 <= status["avg_assignment_s"] <= 5  # p-picked: assigned right away
    assert status["max_lateness_s"] >= 0
    # Each downgrade fired on the first tick at or after its deadline, however late the
    # machine ran that tick: no tick that could have fired one let it pass.
    assert status["late_downgrades"] == 0


async def test_two_tenants_posts_with_one_post_id_keep_their_own_clocks(
    settings: Settings, sla_process: Process
) -> None:
    """Tenants choose their post ids: acme's and patient's posts share one. Each is an item of
    its own - patient's review stops only patient's clock, acme's still runs out."""
    await start(settings, sla_process)
    hasty = decision("p-shared")  # acme: 4 s
    patient = decision("p-shared", tenant="patient", policy="sla-patient@1")  # 60 s
    await send(settings, Topic.REVIEW, hasty, patient)
    await asyncio.sleep(1)
    assert sla_status(sla_process)["pending"] == 2
    await send(settings, Topic.REVIEWS, review_of(patient, Verdict.UNSAFE))
    outcome = await wait_for(settings, lambda o: "p-shared" in o.downgrades, DEADLINE_S + 20)
    got = outcome.decisions["p-shared"]
    assert (got.tenant, got.policy) == ("acme", hasty.policy)
    assert len(outcome.downgrades["p-shared"]) == 1
    status = sla_status(sla_process)
    assert status["pending"] == 0 and status["counts"]["expired"] == 1


async def test_late_review_is_recorded_once(settings: Settings, sla_process: Process) -> None:
    await start(settings, sla_process)
    d = decision("p-slow")
    await send(settings, Topic.REVIEW, d)
    outcome = await wait_for(settings, lambda o: "p-slow" in o.downgrades)
    assert "p-slow" in outcome.downgrades
    late = review_of(d, Verdict.UNSAFE)
    await send(settings, Topic.REVIEWS, late, late)
    outcome = await wait_for(settings, lambda o: "late_review" in o.kinds("p-slow"), 20)
    await asyncio.sleep(1)
    outcome = await collect_sla(settings)
    assert outcome.kinds("p-slow") == {"warning", "assignment_breach", "expired", "late_review"}
    assert len(outcome.events[("p-slow", "late_review")]) == 1
    assert_sla_invariants(outcome, expired={"p-slow"}, in_time=set(), max_emissions_per_post=1)


async def test_kill9_with_items_pending_downgrades_each_exactly_once(
    settings: Settings, sla_process: Process
) -> None:
    """RELIABILITY.md 19: kill -9 while items are pending; restart; each downgraded once."""
    await start(settings, sla_process)
    base = utcnow()
    # Deadlines spread over 1..13 s from now: some fire before the kill, some during the outage,
    # some after the restart.
    items = [
        decision(f"p-{i:03d}", base - timedelta(seconds=3) + timedelta(seconds=i * 0.4))
        for i in range(30)
    ]
    # Reviewed in time: items whose deadline is 7+ s away when their review is sent (an item
    # due within a second, under load, may be downgraded before its review is read).
    reviewed_ids = {d.post_id for d in items[15::5]}
    await send(settings, Topic.REVIEW, *items)
    await send(settings, Topic.REVIEWS, *[review_of(d) for d in items if d.post_id in reviewed_ids])
    await asyncio.sleep(3)
    before = await collect_sla(settings)
    assert before.downgrades, "some items should have expired before the kill"
    assert sla_process.kill(signal.SIGKILL) == -signal.SIGKILL
    await asyncio.sleep(2)
    sla_process.start()
    await asyncio.to_thread(sla_process.wait_ready, 60)
    ready_at = utcnow()
    expected = {d.post_id for d in items} - reviewed_ids
    outcome = await wait_for(settings, lambda o: expected <= set(o.downgrades), 60)
    await asyncio.sleep(2)
    outcome = await collect_sla(settings)
    # The kill may land between publishing a downgrade and recording it: one redelivery.
    assert_sla_invariants(
        outcome,
        expired=expected,
        in_time=reviewed_ids,
        max_emissions_per_post=emission_bound(redeliveries=1),
    )
    assert len(before.downgrades) < len(expected)
    # The bound after a restart: overdue items fire on the first ticks after recovery, the
    # others within the running bound of their deadline.
    for d in items:
        if d.post_id in expected:
            fired = outcome.decisions[d.post_id].decided_at
            deadline = d.decided_at + timedelta(seconds=DEADLINE_S)
            assert fired - max(deadline, ready_at) <= timedelta(seconds=BOUND_S), d.post_id


async def test_crash_between_publish_and_table_write_republishes_identically(
    settings: Settings, policy_dir: Path, tmp_path: Path
) -> None:
    env = env_for(
        settings,
        GUARDSTREAM_POLICY_DIR=str(policy_dir),
        GUARDSTREAM_SLA_TICK_S=str(TICK_S),
        GUARDSTREAM_SLA_DATA_DIR=str(tmp_path / "sla-data"),
        GUARDSTREAM_SLA_SESSION_TIMEOUT_S="6",
        GUARDSTREAM_FAULT="sla_after_publish:1",
    )
    proc = Process("sla", env, tmp_path)
    try:
        await start(settings, proc)
        d = decision("p-crash", utcnow() - timedelta(seconds=DEADLINE_S + 1))  # overdue
        await send(settings, Topic.REVIEW, d)
        assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGKILL
        first = await collect_sla(settings)
        assert first.downgrade_emissions == 1
        proc.env.pop("GUARDSTREAM_FAULT")
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 60)
        outcome = await wait_for(settings, lambda o: o.downgrade_emissions >= 2, 30)
        assert outcome.downgrade_emissions == 2  # re-published once …
        assert len(outcome.downgrades["p-crash"]) == 1  # … byte for byte
        assert outcome.re_emissions == 1
        assert_sla_invariants(
            outcome,
            expired={"p-crash"},
            in_time=set(),
            max_emissions_per_post=emission_bound(redeliveries=1),
        )
    finally:
        proc.stop()


async def test_malformed_records_go_to_the_dlq_and_the_app_goes_on(
    settings: Settings, sla_process: Process
) -> None:
    await start(settings, sla_process)
    names = TopicNames(settings.namespace)
    allow = decision("p-wrong-topic").model_copy(update={"action": Action.ALLOW})
    await send(settings, Topic.REVIEW, allow, raw=b"{not json")
    await send(settings, Topic.REVIEWS, raw=orjson.dumps({"schema_version": "9.0"}))
    await send(settings, Topic.ASSIGNMENTS, raw=b"\x00\xff")
    good = decision("p-good")
    await send(settings, Topic.REVIEW, good)
    outcome = await wait_for(settings, lambda o: "p-good" in o.downgrades and len(o.dlq) >= 4)
    reasons = sorted((r.origin.topic, r.reason) for r in outcome.dlq)
    assert reasons == sorted(
        [
            (names[Topic.REVIEW], "not_a_review_decision"),
            (names[Topic.REVIEW], "invalid_json"),
            (names[Topic.REVIEWS], "unsupported_schema_version"),
            (names[Topic.ASSIGNMENTS], "invalid_json"),
        ]
    )
    assert all(r.attempts == 1 and r.consumer.endswith("guardstream-sla") for r in outcome.dlq)
    assert_sla_invariants(outcome, expired={"p-good"}, in_time=set(), max_emissions_per_post=1)


async def test_rebalance_between_workers_downgrades_each_exactly_once(
    settings: Settings, policy_dir: Path, tmp_path: Path
) -> None:
    """A second worker joins (partitions move to it), then the first leaves (they move back)."""
    env = env_for(
        settings,
        GUARDSTREAM_POLICY_DIR=str(policy_dir),
        GUARDSTREAM_SLA_TICK_S=str(TICK_S),
        GUARDSTREAM_SLA_DATA_DIR=str(tmp_path / "sla-data"),
        GUARDSTREAM_SLA_SESSION_TIMEOUT_S="6",
    )
    first, second = Process("sla", env, tmp_path), Process("sla", env, tmp_path / "b")
    (tmp_path / "b").mkdir()
    try:
        await start(settings, first)
        base = utcnow()
        items = [
            decision(f"r-{i:03d}", base - timedelta(seconds=2) + timedelta(seconds=i * 0.5))
            for i in range(30)
        ]
        await send(settings, Topic.REVIEW, *items)
        await asyncio.sleep(2)
        second.start()
        await asyncio.to_thread(second.wait_ready, 60)
        for _ in range(50):  # the partitions are split between the two
            owned = [sla_status(p)["partitions"] for p in (first, second)]
            if all(owned) and sorted(owned[0] + owned[1]) == list(range(6)):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"partitions not split: {owned}")
        await asyncio.sleep(2)
        assert first.kill(signal.SIGTERM) == 0
        expected = {d.post_id for d in items}
        outcome = await wait_for(settings, lambda o: expected <= set(o.downgrades), 60)
        await asyncio.sleep(2)
        outcome = await collect_sla(settings)
        assert_sla_invariants(outcome, expired=expected, in_time=set(), max_emissions_per_post=1)
        assert not outcome.dlq
    finally:
        first.stop()
        second.stop()


async def test_finished_items_are_purged_after_retention(
    settings: Settings, policy_dir: Path, tmp_path: Path
) -> None:
    env = env_for(
        settings,
        GUARDSTREAM_POLICY_DIR=str(policy_dir),
        GUARDSTREAM_SLA_TICK_S=str(TICK_S),
        GUARDSTREAM_SLA_DATA_DIR=str(tmp_path / "sla-data"),
        GUARDSTREAM_SLA_RETAIN_S="2",
    )
    proc = Process("sla", env, tmp_path)
    try:
        await start(settings, proc)
        expiring, reviewed = decision("p-exp"), decision("p-rev")
        await send(settings, Topic.REVIEW, expiring, reviewed)
        await send(settings, Topic.REVIEWS, review_of(reviewed))
        await wait_for(settings, lambda o: "p-exp" in o.downgrades)
        for _ in range(50):
            if sla_status(proc)["items"] == 0:
                break
            await asyncio.sleep(0.2)
        assert sla_status(proc)["items"] == 0
        outcome = await collect_sla(settings)
        assert_sla_invariants(
            outcome, expired={"p-exp"}, in_time={"p-rev"}, max_emissions_per_post=1
        )
    finally:
        proc.stop()
