"""The review SLA as pure functions: deadlines, what is due, what to publish, deterministic ids.

One `Item` per post under review (the faust table's value). Every effect the SLA has on the
outside world — a warning, the downgrade, an assignment breach, a late review — is first
*stamped* on the item with the time it was decided, then published, then marked *sent*. The
outputs of an effect are built only from the item and its stamp, so publishing them again after
a crash (stamp written, sent not yet) produces the same bytes: consumers see a replay, never a
second, different downgrade. Nothing here does I/O or reads a clock; times are epoch seconds.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from guardstream.contracts import ids
from guardstream.contracts.events import (
    Action,
    Alert,
    AlertSeverity,
    AssignmentEvent,
    Decision,
    Envelope,
    Review,
    ReviewAssignment,
    ReviewStage,
    SlaEvent,
    SlaEventKind,
    Source,
    Verdict,
)
from guardstream.contracts.identity import HasIdentity, PostIdentity
from guardstream.contracts.ids import stable_id
from guardstream.contracts.topics import Topic
from guardstream.policy import ReviewSla

ITEM_VERSION: Final = 1
SLA_RULE: Final = "review_sla"


class Phase(enum.StrEnum):
    PENDING = "pending"  # waiting for a human
    EXPIRED = "expired"  # deadline passed unreviewed: downgraded to safe
    REVIEWED = "reviewed"  # a human decided in time (or before we saw the decision)
    LATE = "late"  # a human decided after the downgrade: the human verdict wins downstream
    EARLY = "early"  # assigned before its decision reached us (topics are not ordered)


# Effects, in the order they are published when several are due at once.
EFFECT_ORDER: Final = (
    SlaEventKind.ASSIGNMENT_BREACH,
    SlaEventKind.WARNING,
    SlaEventKind.EXPIRED,
    SlaEventKind.LATE_REVIEW,
)


def item_key(tenant: str, post_id: str) -> str:
    """An item's table key: a post is named by its tenant and its post_id (another tenant's
    post with the same post_id is another item). Neither holds a control character."""
    return f"{tenant}\x1f{post_id}"


@dataclass(frozen=True, slots=True)
class Item(HasIdentity):
    """What the SLA app knows about one post under review (table value, key = `item_key`)."""

    identity: PostIdentity  # also read as item.tenant, item.post_id, …
    partition: int  # source partition: the changelog partition and the index it lives in
    decision_id: str  # the decision that sent the post to review
    model: str
    adapter: str | None
    decided_at: float
    deadline_s: int
    deadline_at: float
    warn_at: float
    assign_by: float
    phase: Phase = Phase.PENDING
    assigned_at: float | None = None
    reviewed_at: float | None = None
    closed_at: float | None = None  # reviewed or expired: when the retention clock starts
    stamped: Mapping[str, float] = field(default_factory=dict)  # effect kind → decided at
    sent: frozenset[str] = frozenset()
    traceparent: str | None = None  # of the review decision: every output continues its trace
    # Sent by a `hold` (schema 1.1): the post stays unpublished until a person decides, so an
    # expired deadline raises the breach alert but publishes no downgrade to safe.
    held: bool = False

    # --- serialisation (JSON-friendly dict: the faust table's changelog value) --------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "v": ITEM_VERSION,
            # The identity stays flat in the changelog: items written before it was a
            # sub-model read back unchanged.
            **self.identity.fields(),
            "partition": self.partition,
            "decision_id": self.decision_id,
            "model": self.model,
            "adapter": self.adapter,
            "decided_at": self.decided_at,
            "deadline_s": self.deadline_s,
            "deadline_at": self.deadline_at,
            "warn_at": self.warn_at,
            "assign_by": self.assign_by,
            "phase": self.phase.value,
            "assigned_at": self.assigned_at,
            "reviewed_at": self.reviewed_at,
            "closed_at": self.closed_at,
            "stamped": dict(sorted(self.stamped.items())),
            "sent": sorted(self.sent),
            "traceparent": self.traceparent,
            "held": self.held,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Item:
        if data.get("v") != ITEM_VERSION:
            raise ValueError(f"unknown SLA item version {data.get('v')!r}")
        return cls(
            identity=PostIdentity(
                tenant=str(data["tenant"]),
                post_id=str(data["post_id"]),
                post_event_id=str(data["post_event_id"]),
                policy=str(data["policy"]),
                content_key=str(data["content_key"]),
            ),
            partition=int(data["partition"]),
            decision_id=str(data["decision_id"]),
            model=str(data["model"]),
            adapter=data.get("adapter"),
            decided_at=float(data["decided_at"]),
            deadline_s=int(data["deadline_s"]),
            deadline_at=float(data["deadline_at"]),
            warn_at=float(data["warn_at"]),
            assign_by=float(data["assign_by"]),
            phase=Phase(data["phase"]),
            assigned_at=_opt_float(data.get("assigned_at")),
            reviewed_at=_opt_float(data.get("reviewed_at")),
            closed_at=_opt_float(data.get("closed_at")),
            stamped={str(k): float(v) for k, v in dict(data.get("stamped") or {}).items()},
            sent=frozenset(str(k) for k in data.get("sent") or ()),
            traceparent=data.get("traceparent"),  # absent in items written before it existed
            held=bool(data.get("held", False)),  # likewise
        )

    # --- questions -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return item_key(self.tenant, self.post_id)

    @property
    def unsent(self) -> list[SlaEventKind]:
        """Effects decided but not yet acknowledged by the broker, in publishing order."""
        return [k for k in EFFECT_ORDER if k.value in self.stamped and k.value not in self.sent]

    def next_due(self, retain_s: float) -> float:
        """When the timer must next look at this item (the deadline index's key)."""
        unsent = [self.stamped[k.value] for k in self.unsent]
        if unsent:
            return min(unsent)
        if self.phase is Phase.PENDING:
            times = [self.deadline_at]
            if SlaEventKind.WARNING.value not in self.stamped and self.warn_at < self.deadline_at:
                times.append(self.warn_at)
            breach = SlaEventKind.ASSIGNMENT_BREACH.value
            if self.assigned_at is None and breach not in self.stamped:
                times.append(self.assign_by)
            return min(times)
        return (self.closed_at or self.deadline_at) + retain_s  # purge


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- transitions (each returns the new item, or None when nothing changes) -------------------
def enter(decision: Decision, partition: int, sla: ReviewSla, current: Item | None) -> Item | None:
    """A decision with action review or hold starts the SLA clock, measured from `decided_at`."""
    if current is not None and current.decision_id == decision.decision_id:
        return None  # a replay, or the review arrived first (REVIEWED already)
    if (
        current is not None
        and current.phase is Phase.PENDING
        and current.decided_at > epoch(decision.decided_at)
    ):
        return None  # an older decision for a post already re-decided
    start = epoch(decision.decided_at)
    early = current.assigned_at if current is not None and current.phase is Phase.EARLY else None
    return Item(
        identity=PostIdentity.of(decision),
        partition=partition,
        decision_id=decision.decision_id,
        model=decision.model,
        adapter=decision.adapter,
        decided_at=start,
        deadline_s=sla.deadline_s,
        deadline_at=start + sla.deadline_s,
        warn_at=start + sla.warn_after_s,
        assign_by=start + sla.assign_within_s,
        assigned_at=early,
        held=decision.action is Action.HOLD,
    )


def reviewed(review: Review, partition: int, current: Item | None) -> Item | None:
    """A human decided: the item leaves the SLA; after expiry it is recorded as a late review."""
    if review.stage is not ReviewStage.FIRST:
        return None  # QA re-reviews do not touch the SLA
    when = epoch(review.reviewed_at)
    if current is None or current.decision_id != review.decision_id:
        if current is not None and current.phase is Phase.PENDING:
            return None  # a review of an earlier round; the current one still runs
        # The review overtook the decision (different topics are not ordered): remember it, so
        # the decision arriving later does not start a clock nobody will stop.
        return Item(
            identity=PostIdentity.of(review),
            partition=partition,
            decision_id=review.decision_id,
            model=review.model or "unknown",
            adapter=review.adapter,
            decided_at=when,
            deadline_s=0,
            deadline_at=when,
            warn_at=when,
            assign_by=when,
            phase=Phase.REVIEWED,
            reviewed_at=when,
            closed_at=when,
        )
    if current.phase is Phase.PENDING:
        return replace(current, phase=Phase.REVIEWED, reviewed_at=when, closed_at=when)
    if current.phase is Phase.EXPIRED:
        stamped = {**current.stamped, SlaEventKind.LATE_REVIEW.value: when}
        return replace(current, phase=Phase.LATE, reviewed_at=when, stamped=stamped)
    return None  # REVIEWED / LATE: a duplicate review event


def assigned(assignment: ReviewAssignment, partition: int, current: Item | None) -> Item | None:
    """The console assigned the task: the assignment clock stops (a release does not restart
    it: the SLA is about the first pick-up)."""
    if assignment.event is not AssignmentEvent.ASSIGNED:
        return None
    when = epoch(assignment.at)
    if current is None:
        # The assignment overtook the decision: keep it for the decision to pick up.
        return Item(
            identity=PostIdentity(
                tenant=assignment.tenant,
                post_id=assignment.post_id,
                post_event_id="",
                policy="",
                content_key="",
            ),
            partition=partition,
            decision_id="",
            model="",
            adapter=None,
            decided_at=when,
            deadline_s=0,
            deadline_at=when,
            warn_at=when,
            assign_by=when,
            phase=Phase.EARLY,
            assigned_at=when,
            closed_at=when,
        )
    if current.assigned_at is not None:
        return None
    return replace(current, assigned_at=when)


def stamp_due(item: Item, now: float) -> Item | None:
    """Stamp every effect that is due at `now` and not stamped yet."""
    if item.phase is not Phase.PENDING:
        return None
    stamped = dict(item.stamped)
    phase: Phase = item.phase
    closed = item.closed_at
    if (
        item.assigned_at is None
        and now >= item.assign_by
        and SlaEventKind.ASSIGNMENT_BREACH.value not in stamped
    ):
        stamped[SlaEventKind.ASSIGNMENT_BREACH.value] = now
    if now >= item.deadline_at:
        stamped[SlaEventKind.EXPIRED.value] = now
        phase, closed = Phase.EXPIRED, now
    elif now >= item.warn_at and SlaEventKind.WARNING.value not in stamped:
        stamped[SlaEventKind.WARNING.value] = now
    if stamped == item.stamped:
        return None
    return replace(item, stamped=stamped, phase=phase, closed_at=closed)


def mark_sent(item: Item, kinds: Iterable[SlaEventKind]) -> Item:
    return replace(item, sent=item.sent | {k.value for k in kinds})


def purgeable(item: Item, now: float, retain_s: float) -> bool:
    return item.phase is not Phase.PENDING and not item.unsent and now >= item.next_due(retain_s)


# --- outputs -----------------------------------------------------------------------------------
def sla_id(item: Item, kind: str) -> str:
    """One id per (post, decision under review, effect): a re-publish carries the same id."""
    return stable_id(ids.SLA_OUTPUT, kind, item.post_id, item.decision_id)


def downgrade_decision_id(item: Item) -> str:
    return stable_id(ids.SLA_DOWNGRADE, item.decision_id, item.post_id, Source.SLA_TIMEOUT.value)


def describe_seconds(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


Output = tuple[Topic, str, Envelope]  # topic, message key, event


def outputs(item: Item, kind: SlaEventKind) -> list[Output]:
    """What one stamped effect publishes. Built only from the item: re-publishing is identical."""
    when = at(item.stamped[kind.value])
    deadline = at(item.deadline_at)
    sla = describe_seconds(item.deadline_s)
    event_id = sla_id(item, f"sla-event:{kind.value}")
    out: list[Output] = []
    downgrade: str | None = None
    if kind is SlaEventKind.EXPIRED and not item.held:
        downgrade = downgrade_decision_id(item)
        decision = Decision.make(
            decision_id=downgrade,
            at=when,
            **item.identity.fields(),
            verdict=Verdict.SAFE,
            action=Action.ALLOW,
            reason=(
                f"Review SLA of {sla} ({item.policy}) expired without a human decision; "
                f"downgraded to safe by the SLA timer (review decision {item.decision_id})."
            ),
            rule=SLA_RULE,
            source=Source.SLA_TIMEOUT,
            model=item.model,
            adapter=item.adapter,
        )
        out.append((Topic.ALLOW, item.post_id, decision))
    alert = _HELD_BREACH if kind is SlaEventKind.EXPIRED and item.held else _ALERTS.get(kind)
    if alert is not None:
        alert_kind, severity, summary = alert
        alert_id = sla_id(item, f"alert:{alert_kind}")
        out.append(
            (
                Topic.ALERTS,
                alert_id,
                Alert(
                    event_id=alert_id,
                    produced_at=when,
                    alert_id=alert_id,
                    kind=alert_kind,
                    severity=severity,
                    tenant=item.tenant,
                    post_id=item.post_id,
                    summary=summary.format(sla=sla, policy=item.policy),
                    labels={"policy": item.policy, "decision_id": item.decision_id},
                    raised_at=when,
                ),
            )
        )
    out.append(
        (
            Topic.SLA_EVENTS,
            item.post_id,
            SlaEvent(
                event_id=event_id,
                produced_at=when,
                sla_event_id=event_id,
                post_id=item.post_id,
                tenant=item.tenant,
                decision_id=item.decision_id,
                kind=kind,
                deadline=deadline,
                downgrade_decision_id=downgrade,
                at=when,
            ),
        )
    )
    return out


_ALERTS: Final[dict[SlaEventKind, tuple[str, AlertSeverity, str]]] = {
    SlaEventKind.WARNING: (
        "sla_warning",
        AlertSeverity.WARNING,
        "Contested item not reviewed yet; its {sla} review SLA ({policy}) is running out.",
    ),
    SlaEventKind.EXPIRED: (
        "sla_breach",
        AlertSeverity.CRITICAL,
        "Review SLA of {sla} ({policy}) breached: the item was downgraded to safe.",
    ),
    SlaEventKind.ASSIGNMENT_BREACH: (
        "assignment_breach",
        AlertSeverity.WARNING,
        "Contested item not assigned to a reviewer within its assignment SLA ({policy}).",
    ),
}


# A held post is never published by the timer: the breach stays in front of people instead.
_HELD_BREACH: Final = (
    "sla_breach",
    AlertSeverity.CRITICAL,
    "Review SLA of {sla} ({policy}) breached: the item is held unpublished until reviewed.",
)


# --- the per-partition deadline index ---------------------------------------------------------
class DeadlineIndex:
    """Item keys (`item_key`) by the time the timer must next look at them (a heap with lazy
    deletion).

    `schedule` is O(log n); `pop_due` pops only what is due, so a tick costs O(k log n) for k
    due items, not a scan of every pending one. A rescheduled id leaves a stale heap entry that
    is skipped when it surfaces; the heap is compacted when stale entries dominate.
    """

    __slots__ = ("_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, post_id: str, due: float | None) -> None:
        if due is None:
            self._due.pop(post_id, None)
            return
        if self._due.get(post_id) == due:
            return
        self._due[post_id] = due
        heapq.heappush(self._heap, (due, post_id))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(d, p) for p, d in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, post_id: str) -> None:
        self._due.pop(post_id, None)

    def pop_due(self, now: float, limit: int | None = None) -> list[str]:
        """Ids due at `now` (each once), earliest first; they leave the index."""
        out: list[str] = []
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= now and (limit is None or len(out) < limit):
            when, post_id = heapq.heappop(heap)
            if due.get(post_id) == when:
                del due[post_id]
                out.append(post_id)
        return out

    def earliest(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None


@dataclass
class ResponseTimes:
    """Rolling mean of review response times (reviewed_at − decided_at) over the last `size`
    in-time or late first-stage reviews: the console's "当前平均响应时间"."""

    size: int = 200
    _values: list[float] = field(default_factory=list)
    _next: int = 0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if len(self._values) < self.size:
            self._values.append(seconds)
        else:
            self._values[self._next] = seconds
            self._next = (self._next + 1) % self.size

    def mean(self) -> float | None:
        return sum(self._values) / len(self._values) if self._values else None

    def __len__(self) -> int:
        return len(self._values)
