"""The SLA's pure logic: deadlines from the pack, what is due when, deterministic outputs."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from guardstream.contracts.events import (
    Action,
    Alert,
    AssignmentEvent,
    Decision,
    Review,
    ReviewAssignment,
    ReviewOutcome,
    ReviewStage,
    SlaEvent,
    SlaEventKind,
    Source,
    Verdict,
)
from guardstream.contracts.identity import PostIdentity
from guardstream.contracts.topics import Topic
from guardstream.policy import PolicyPack, review_sla
from guardstream.sla.logic import (
    SLA_RULE,
    DeadlineIndex,
    Item,
    Phase,
    ResponseTimes,
    assigned,
    describe_seconds,
    downgrade_decision_id,
    enter,
    mark_sent,
    outputs,
    purgeable,
    reviewed,
    stamp_due,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
S0 = T0.timestamp()
RETAIN = 1000.0
PACK = PolicyPack(
    id="p",
    version="1",
    tenants=("*",),
    review_sla_s=100,
    review_sla_by_category={"Suicide & Self-Harm": 40},
    assignment_sla_s=30,
    review_warning_fraction=0.75,
)


def decision(
    post_id: str = "p1",
    categories: tuple[str, ...] = (),
    decision_id: str = "d1",
    after_s: float = 0,
    adapter: str | None = None,
) -> Decision:
    return Decision(
        event_id=decision_id,
        produced_at=T0,
        decision_id=decision_id,
        post_id=post_id,
        post_event_id="e1",
        tenant="acme",
        verdict=Verdict.CONTROVERSIAL,
        action=Action.REVIEW,
        categories=categories,
        confidence=0.6,
        reason="r",
        source=Source.MODEL,
        model="m",
        adapter=adapter,
        policy=PACK.ref,
        content_key="a" * 32,
        decided_at=T0 + timedelta(seconds=after_s),
    )


def review(after_s: float, decision_id: str = "d1", stage: ReviewStage = ReviewStage.FIRST):
    return Review(
        event_id="r1",
        produced_at=T0,
        review_id="r1",
        task_id="t1",
        post_id="p1",
        post_event_id="e1",
        tenant="acme",
        decision_id=decision_id,
        content_key="a" * 32,
        policy=PACK.ref,
        outcome=ReviewOutcome.CORRECT,
        stage=stage,
        verdict=Verdict.UNSAFE,
        reason="x",
        tags=("t",),
        reviewer="rv",
        model_verdict=Verdict.CONTROVERSIAL,
        reviewed_at=T0 + timedelta(seconds=after_s),
    )


def assignment(after_s: float) -> ReviewAssignment:
    return ReviewAssignment(
        event_id="a1",
        produced_at=T0,
        task_id="t1",
        post_id="p1",
        tenant="acme",
        event=AssignmentEvent.ASSIGNED,
        reviewer="rv",
        at=T0 + timedelta(seconds=after_s),
    )


def pending(categories: tuple[str, ...] = ()) -> Item:
    item = enter(decision(categories=categories), 3, review_sla(PACK, categories), None)
    assert item is not None
    return item


def test_deadline_comes_from_the_pack_and_the_tightest_category() -> None:
    item = pending()
    assert (item.deadline_at - S0, item.warn_at - S0, item.assign_by - S0) == (100, 75, 30)
    tight = pending(("Suicide & Self-Harm",))
    assert (tight.deadline_at - S0, tight.warn_at - S0, tight.assign_by - S0) == (40, 30, 30)


def test_nothing_due_before_the_first_deadline() -> None:
    item = pending()
    assert item.next_due(RETAIN) == S0 + 30
    assert stamp_due(item, S0 + 29.9) is None


def test_assignment_breach_then_warning_then_expiry() -> None:
    item = pending()
    item = stamp_due(item, S0 + 31)
    assert item is not None and item.unsent == [SlaEventKind.ASSIGNMENT_BREACH]
    assert item.next_due(RETAIN) == S0 + 31  # stamped, not yet sent: look again at once
    item = mark_sent(item, item.unsent)
    assert item.next_due(RETAIN) == S0 + 75
    item = stamp_due(item, S0 + 76)
    assert item is not None and item.unsent == [SlaEventKind.WARNING]
    item = mark_sent(item, item.unsent)
    assert item.next_due(RETAIN) == S0 + 100  # the warning is behind it
    assert stamp_due(item, S0 + 99) is None
    item = stamp_due(item, S0 + 100.2)
    assert item is not None and item.phase is Phase.EXPIRED
    assert item.unsent == [SlaEventKind.EXPIRED] and item.stamped["expired"] == S0 + 100.2
    item = mark_sent(item, item.unsent)
    assert item.next_due(RETAIN) == S0 + 100.2 + RETAIN
    assert not purgeable(item, S0 + 1000, RETAIN) and purgeable(item, S0 + 1101, RETAIN)


def test_each_effect_is_due_at_its_instant_not_after() -> None:
    breach = stamp_due(pending(), S0 + 30)
    assert breach is not None and breach.unsent == [SlaEventKind.ASSIGNMENT_BREACH]
    warning = stamp_due(mark_sent(breach, breach.unsent), S0 + 75)
    assert warning is not None and warning.unsent == [SlaEventKind.WARNING]
    expired = stamp_due(mark_sent(warning, warning.unsent), S0 + 100)
    assert expired is not None and expired.unsent == [SlaEventKind.EXPIRED]
    done = mark_sent(expired, expired.unsent)
    assert done.closed_at == S0 + 100
    assert purgeable(done, S0 + 100 + RETAIN, RETAIN)  # at the end of retention, not after
    assert not purgeable(done, S0 + 100 + RETAIN - 0.001, RETAIN)


def test_an_overdue_item_expires_without_a_pointless_warning() -> None:
    item = stamp_due(pending(), S0 + 500)
    assert item is not None
    assert item.unsent == [SlaEventKind.ASSIGNMENT_BREACH, SlaEventKind.EXPIRED]


def test_assigned_in_time_means_no_breach() -> None:
    item = assigned(assignment(10), 3, pending())
    assert item is not None and item.assigned_at == S0 + 10
    assert item.next_due(RETAIN) == S0 + 75
    assert assigned(assignment(12), 3, item) is None  # the first pick-up counts


def test_assignment_before_the_decision_is_kept() -> None:
    early = assigned(assignment(1), 3, None)
    assert early == Item(
        identity=PostIdentity(
            tenant="acme", post_id="p1", post_event_id="", policy="", content_key=""
        ),
        partition=3,
        decision_id="",
        model="",
        adapter=None,
        decided_at=S0 + 1,
        deadline_s=0,
        deadline_at=S0 + 1,
        warn_at=S0 + 1,
        assign_by=S0 + 1,
        phase=Phase.EARLY,
        assigned_at=S0 + 1,
        closed_at=S0 + 1,
    )
    assert early.next_due(RETAIN) == S0 + 1 + RETAIN  # purged if its decision never comes
    item = enter(decision(), 3, review_sla(PACK, ()), early)
    assert item is not None and item.phase is Phase.PENDING and item.assigned_at == S0 + 1


def test_review_in_time_closes_and_duplicates_change_nothing() -> None:
    item = reviewed(review(20), 3, pending())
    assert item is not None and item.phase is Phase.REVIEWED and not item.unsent
    assert (item.reviewed_at, item.closed_at) == (S0 + 20, S0 + 20)
    assert reviewed(review(20), 3, item) is None
    assert stamp_due(item, S0 + 500) is None


def test_review_before_the_decision_stops_the_clock_from_starting() -> None:
    early = reviewed(review(5), 3, None)
    assert early == Item(
        identity=PostIdentity(
            tenant="acme", post_id="p1", post_event_id="e1", policy=PACK.ref, content_key="a" * 32
        ),
        partition=3,
        decision_id="d1",
        model="unknown",  # the review does not say which model decided
        adapter=None,
        decided_at=S0 + 5,
        deadline_s=0,
        deadline_at=S0 + 5,
        warn_at=S0 + 5,
        assign_by=S0 + 5,
        phase=Phase.REVIEWED,
        reviewed_at=S0 + 5,
        closed_at=S0 + 5,
    )
    assert enter(decision(), 3, review_sla(PACK, ()), early) is None
    said = reviewed(review(5).model_copy(update={"model": "m", "adapter": "fb-1"}), 3, None)
    assert said is not None and (said.model, said.adapter) == ("m", "fb-1")


def test_a_review_of_an_earlier_round_leaves_the_running_clock_alone() -> None:
    assert reviewed(review(5, decision_id="d0"), 3, pending()) is None


def test_a_newer_decision_restarts_the_clock_an_older_one_is_ignored() -> None:
    running = enter(decision(decision_id="d2", after_s=10), 3, review_sla(PACK, ()), None)
    assert running is not None
    assert enter(decision(decision_id="d1"), 3, review_sla(PACK, ()), running) is None
    newer = enter(
        decision(decision_id="d3", after_s=20, adapter="fb-1"), 3, review_sla(PACK, ()), running
    )
    assert newer is not None
    assert (newer.decision_id, newer.deadline_at, newer.adapter) == ("d3", S0 + 120, "fb-1")


def test_late_review_is_an_effect_once() -> None:
    item = stamp_due(pending(), S0 + 101)
    assert item is not None
    item = mark_sent(item, item.unsent)
    late = reviewed(review(300), 3, item)
    assert late is not None and late.phase is Phase.LATE
    assert late.unsent == [SlaEventKind.LATE_REVIEW] and late.reviewed_at == S0 + 300
    assert reviewed(review(300), 3, mark_sent(late, late.unsent)) is None


def test_qa_reviews_do_not_touch_the_sla() -> None:
    assert reviewed(review(5, stage=ReviewStage.QA), 3, pending()) is None


def test_replayed_decision_changes_nothing() -> None:
    assert enter(decision(), 3, review_sla(PACK, ()), pending()) is None


def test_expiry_outputs_are_byte_identical_and_honest() -> None:
    item = stamp_due(pending(), S0 + 100.5)
    assert item is not None
    # Re-serialised (as after a restart), the outputs are the same bytes.
    again = Item.from_dict(item.to_dict())
    first = [(t, k, e.to_json()) for t, k, e in outputs(item, SlaEventKind.EXPIRED)]
    assert first == [(t, k, e.to_json()) for t, k, e in outputs(again, SlaEventKind.EXPIRED)]
    topics = [t for t, _, _ in first]
    assert topics == [Topic.ALLOW, Topic.ALERTS, Topic.SLA_EVENTS]
    downgrade = Decision.from_json(first[0][2])
    assert (downgrade.verdict, downgrade.action, downgrade.source) == (
        Verdict.SAFE,
        Action.ALLOW,
        Source.SLA_TIMEOUT,
    )
    assert downgrade.decision_id != item.decision_id
    assert (downgrade.post_event_id, downgrade.policy, downgrade.content_key) == (
        "e1",
        PACK.ref,
        "a" * 32,
    )
    assert "100 s" in downgrade.reason and "SLA" in downgrade.reason
    assert (downgrade.rule, downgrade.model, downgrade.adapter) == (SLA_RULE, "m", None)
    assert downgrade.decided_at.timestamp() == S0 + 100.5
    alert = Alert.from_json(first[1][2])
    event = SlaEvent.from_json(first[2][2])
    assert alert.kind == "sla_breach" and first[1][1] == alert.alert_id
    assert (alert.tenant, alert.post_id) == ("acme", "p1")
    assert alert.labels == {"policy": PACK.ref, "decision_id": "d1"}
    assert "100 s" in alert.summary and PACK.ref in alert.summary
    adapted = stamp_due(replace(pending(), adapter="fb-1"), S0 + 100.5)
    assert adapted is not None
    (_, _, kept), *_ = outputs(adapted, SlaEventKind.EXPIRED)
    assert isinstance(kept, Decision) and kept.adapter == "fb-1"
    assert event.downgrade_decision_id == downgrade.decision_id
    assert event.deadline.timestamp() == S0 + 100
    # Different effects, different ids.
    warned = stamp_due(pending(), S0 + 80)
    assert warned is not None
    (_, _, warn_alert), (_, _, warn_event) = outputs(warned, SlaEventKind.WARNING)
    assert isinstance(warn_event, SlaEvent) and warn_event.sla_event_id != event.sla_event_id
    assert isinstance(warn_alert, Alert) and warn_alert.kind == "sla_warning"
    assert warn_alert.alert_id != alert.alert_id


def test_item_round_trips_and_rejects_unknown_versions() -> None:
    item = assigned(assignment(3), 3, pending())
    assert item is not None
    assert Item.from_dict(item.to_dict()) == item
    with pytest.raises(ValueError, match="version 99"):
        Item.from_dict({**item.to_dict(), "v": 99})


def test_every_field_of_an_item_survives_the_changelog() -> None:
    """An item with every optional field set (a late review of an adapter's decision)."""
    item = stamp_due(replace(pending(), adapter="fb-1", assigned_at=S0 + 3), S0 + 101)
    assert item is not None
    late = reviewed(review(300), 3, mark_sent(item, item.unsent))
    assert late is not None
    late = replace(
        mark_sent(late, late.unsent), traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    )
    assert None not in (late.adapter, late.assigned_at, late.reviewed_at, late.closed_at)
    assert late.sent == {"expired", "late_review"}
    assert Item.from_dict(late.to_dict()) == late
    assert Item.from_dict(orjson.loads(orjson.dumps(late.to_dict()))) == late


def test_a_downgrade_keeps_its_id_across_releases() -> None:
    """The id is how consumers recognise a re-published downgrade, also one re-published by a
    newer release after a crash: it is a pinned function of the decision and the post."""
    assert downgrade_decision_id(pending()) == "a1d5132034fc59889279142ce6f319b5"


def test_deadline_index_pops_only_what_is_due_once() -> None:
    index = DeadlineIndex()
    rnd = random.Random(3)
    dues = {f"p{i}": rnd.uniform(0, 100) for i in range(2000)}
    for post_id, due in dues.items():
        index.schedule(post_id, due)
    for post_id in list(dues)[:500]:  # rescheduled: the old entry must not fire
        dues[post_id] += 200
        index.schedule(post_id, dues[post_id])
    got = index.pop_due(50)
    assert got == sorted((p for p, d in dues.items() if d <= 50), key=lambda p: dues[p])
    assert index.pop_due(50) == []
    assert len(index) == len(dues) - len(got)
    assert index.earliest() == min(d for p, d in dues.items() if d > 50)
    assert set(index.pop_due(1e9, limit=10**6)) == {p for p, d in dues.items() if d > 50}


def test_deadline_index_unschedules_limits_and_skips_stale_heads() -> None:
    index = DeadlineIndex()
    assert index.earliest() is None
    index.schedule("a", 1.0)
    index.schedule("a", 1.0)  # unchanged: no second heap entry
    assert len(index._heap) == 1
    index.schedule("a", 5.0)  # the entry at 1.0 is stale now
    assert index.earliest() == 5.0
    index.schedule("gone", None)  # unscheduling what is not there is fine
    for name in ("b", "c", "d"):
        index.schedule(name, 2.0)
    index.schedule("b", None)
    index.discard("c")
    assert index.pop_due(10.0, limit=1) == ["d"]
    assert index.pop_due(10.0) == ["a"]
    for n in range(5):
        index.schedule(f"x{n}", 1.0)
    assert len(index.pop_due(10.0, limit=2)) == 2


def test_deadline_index_compacts_stale_entries() -> None:
    index = DeadlineIndex()
    for round_ in range(20):
        for i in range(200):
            index.schedule(f"p{i}", float(round_ * 1000 + i))
            assert len(index._heap) <= 2 * len(index) + 1024  # after every push, not on average
    assert index.pop_due(19_000 + 199) == [f"p{i}" for i in range(200)]


def test_response_time_is_a_rolling_mean() -> None:
    times = ResponseTimes(size=3)
    assert times.mean() is None
    for value in (10, 20, 30, 40):
        times.add(value)
    assert times.mean() == 30 and len(times) == 3
    for value in (50, 60, 70):  # the window keeps moving: the last three
        times.add(value)
        assert times.mean() == value - 10
    short = ResponseTimes(size=3)
    short.add(0.5)
    short.add(-3)  # a review stamped before its decision (clock skew) counts as instant
    assert short.mean() == 0.25


@pytest.mark.parametrize(("seconds", "text"), [(7200, "2 h"), (1800, "30 min"), (4, "4 s")])
def test_sla_is_described_in_plain_units(seconds: int, text: str) -> None:
    assert describe_seconds(seconds) == text


def test_item_keeps_the_trace_of_its_decision_and_reads_items_written_before_it() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    item = replace(pending(), traceparent=parent)
    assert Item.from_dict(item.to_dict()).traceparent == parent
    older = {k: v for k, v in pending().to_dict().items() if k != "traceparent"}
    assert Item.from_dict(older).traceparent is None


def test_a_held_post_past_its_deadline_is_never_published_by_the_timer() -> None:
    held = enter(
        decision().model_copy(update={"action": Action.HOLD}), 3, review_sla(PACK, ()), None
    )
    assert held is not None and held.held
    assert Item.from_dict(held.to_dict()) == held
    expired = stamp_due(held, S0 + 100.5)
    assert expired is not None and expired.unsent[-1] is SlaEventKind.EXPIRED
    out = outputs(expired, SlaEventKind.EXPIRED)
    topics = [topic for topic, _, _ in out]
    assert Topic.ALLOW not in topics  # no downgrade to safe: it stays held
    assert topics == [Topic.ALERTS, Topic.SLA_EVENTS]
    alert, event = out[0][2], out[1][2]
    assert isinstance(alert, Alert) and "held unpublished" in alert.summary
    assert isinstance(event, SlaEvent) and event.downgrade_decision_id is None
    # The same post sent to plain review is downgraded as before.
    plain = stamp_due(pending(), S0 + 100.5)
    assert plain is not None
    assert Topic.ALLOW in [t for t, _, _ in outputs(plain, SlaEventKind.EXPIRED)]


def test_items_written_before_hold_existed_read_as_not_held() -> None:
    data = pending().to_dict()
    del data["held"]
    assert Item.from_dict(data).held is False
