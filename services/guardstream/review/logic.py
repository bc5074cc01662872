"""The review console's rules, without I/O: who may do what, what a valid submission is, the
events a decision produces, and how an SLA is shown.

Everything here is deterministic given its inputs (ids are hashes, times are passed in), so the
API, the console and the tests agree on one meaning of "a review".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from guardstream.contracts import ids
from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import (
    REVIEW_REASON_MAX,
    AssignmentEvent,
    Decision,
    Review,
    ReviewAssignment,
    ReviewOutcome,
    ReviewStage,
    Source,
    Verdict,
    allowed_characters,
)
from guardstream.contracts.ids import stable_id
from guardstream.policy import PolicyPack
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import human_action

TAG_MAX = 40
SEED_TAGS = (
    "性别歧视",
    "地域攻击",
    "健康污名",
    "政治隐喻",
    "gender discrimination",
    "regional attack",
    "health stigma",
    "political allusion",
)


class Role(enum.StrEnum):
    REVIEWER = "reviewer"
    SENIOR = "senior"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    READ_QUEUE = "read_queue"  # task metadata: verdict, reason, deadline (no post text)
    READ_TEXT = "read_text"  # the post's text
    DECIDE = "decide"  # claim, release, first-stage decision
    QA = "qa"  # re-review decided tasks, agreement figures
    MANAGE = "manage"  # reviewers and credentials


# Admins run the console but do not moderate: they never see post text.
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.REVIEWER: frozenset({Permission.READ_QUEUE, Permission.READ_TEXT, Permission.DECIDE}),
    Role.SENIOR: frozenset(
        {Permission.READ_QUEUE, Permission.READ_TEXT, Permission.DECIDE, Permission.QA}
    ),
    Role.ADMIN: frozenset({Permission.READ_QUEUE, Permission.QA, Permission.MANAGE}),
}
ALL_TENANTS = "*"


@dataclass(frozen=True, slots=True)
class Reviewer:
    id: str
    tenants: tuple[str, ...]
    role: Role
    on_call: bool = False

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def sees(self, tenant: str) -> bool:
        return ALL_TENANTS in self.tenants or tenant in self.tenants


class TaskState(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    DECIDED = "decided"


class SlaState(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    post_id: str
    policy: str
    tenant: str
    lang: str | None
    region: str | None
    decision_id: str
    post_event_id: str
    content_key: str
    model_verdict: Verdict
    categories: tuple[str, ...]
    confidence: float | None
    reason: str
    model: str
    adapter: str | None
    domain_tags: tuple[str, ...]
    created_at: datetime
    deadline: datetime
    warn_at: datetime
    assign_by: datetime
    state: TaskState
    sla: SlaState
    assignee: str | None
    lock_expires_at: datetime | None
    decided_at: datetime | None
    human_verdict: Verdict | None
    late: bool
    downgrade_decision_id: str | None = None
    model_refusal: bool | None = None  # response moderation: the model's `Refusal:` label


def task_id(tenant: str, post_id: str, policy: str) -> str:
    """One task per post and policy of a tenant: a replayed decision maps to the same task,
    and another tenant's post with the same post_id gets a task of its own."""
    return stable_id(ids.REVIEW_TASK, tenant, post_id, policy)


def review_id(task: str, stage: ReviewStage, reviewer: str) -> str:
    # The first stage has one review per task whoever gives it; QA one per senior.
    who = reviewer if stage is ReviewStage.QA else ""
    return stable_id(ids.REVIEW, task, stage.value, who)


def human_decision_id(task: str) -> str:
    return stable_id(ids.HUMAN_DECISION, task)


def assignment_event_id(
    task: str, event: AssignmentEvent, reviewer: str | None, at: datetime
) -> str:
    return stable_id(ids.ASSIGNMENT_EVENT, task, event.value, reviewer or "", at.isoformat())


def parse_tags(configured: str) -> tuple[str, ...]:
    """The configured quick-tag list (comma-separated), trimmed, de-duplicated, in order."""
    tags = [t.strip() for t in configured.split(",")]
    return tuple(dict.fromkeys(t for t in tags if t and len(t) <= TAG_MAX))


class InvalidSubmission(PermanentError, ValueError):
    """A reviewer's submission that cannot be stored; `field` and `message` go back as a 4xx."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Submission:
    outcome: ReviewOutcome
    verdict: Verdict
    categories: tuple[str, ...]
    reason: str | None
    tags: tuple[str, ...]
    refusal: bool | None = None  # response items: the reviewer's `Refusal:` label, if given


def parse_refusal(value: object) -> bool | None:
    """A form's refusal choice: "yes" / "no" (or a JSON bool); empty = not given."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().casefold() in ("yes", "no", "true", "false"):
        return value.strip().casefold() in ("yes", "true")
    raise InvalidSubmission("refusal", "choose yes or no (or leave it empty)")


def validate_submission(
    *,
    model_verdict: Verdict,
    model_categories: Sequence[str],
    outcome: str | None,
    verdict: str | None,
    reason: str | None,
    tags: Iterable[str],
    categories: Iterable[str] | None,
    allowed_tags: Sequence[str],
    refusal: object = None,
    is_response: bool = False,
) -> Submission:
    """The seeds' three actions: ① confirm ② correct the label ③ a reason (required when
    correcting, at most 50 characters), plus at least one quick tag from the configured list.
    A response item may also carry the reviewer's refusal label (did the assistant refuse?)."""
    try:
        chosen = ReviewOutcome(outcome or "")
    except ValueError:
        raise InvalidSubmission("outcome", "choose confirm or correct") from None
    text = (reason or "").strip() or None
    if text is not None and not allowed_characters(text, free_text=True):
        raise InvalidSubmission("reason", "control characters are not allowed")
    if text is not None and len(text) > REVIEW_REASON_MAX:
        raise InvalidSubmission(
            "reason", f"at most {REVIEW_REASON_MAX} characters (got {len(text)})"
        )
    if chosen is ReviewOutcome.CONFIRM:
        if verdict and verdict != model_verdict.value:
            raise InvalidSubmission("verdict", "confirming keeps the model's label; use correct")
        label = model_verdict
    else:
        try:
            label = Verdict(verdict or "")
        except ValueError:
            raise InvalidSubmission("verdict", "choose safe, controversial or unsafe") from None
        if label is model_verdict:
            raise InvalidSubmission("verdict", "a correction must change the model's label")
        if text is None:
            raise InvalidSubmission("reason", "a correction needs a reason (at most 50 characters)")
    picked = tuple(dict.fromkeys(t.strip() for t in tags if t.strip()))
    if not picked:
        raise InvalidSubmission("tags", "pick at least one quick tag")
    unknown = [t for t in picked if t not in allowed_tags]
    if unknown:
        raise InvalidSubmission("tags", f"{len(unknown)} tag(s) not in the configured list")
    cats = tuple(dict.fromkeys(c.strip() for c in (categories or ()) if c.strip()))
    if categories is None or (chosen is ReviewOutcome.CONFIRM and not cats):
        cats = tuple(model_categories)
    if label is Verdict.SAFE:
        cats = ()
    if not all(allowed_characters(c) for c in cats):
        raise InvalidSubmission("categories", "control characters are not allowed")
    if any(len(c) > 64 for c in cats) or len(cats) > 16:
        raise InvalidSubmission("categories", "at most 16 categories of 64 characters")
    refused = parse_refusal(refusal)
    if refused is not None and not is_response:
        raise InvalidSubmission("refusal", "only a response (an assistant's answer) has one")
    return Submission(chosen, label, cats, text, picked, refused)


def blind_form(form: dict[str, Any], first: Verdict) -> dict[str, Any]:
    """A blind QA submission (a label, a reason, tags) as a confirm / correct of the first
    label. The reason is required either way: the senior wrote it before knowing whether they
    agree, and it is what the first reviewer is coached with."""
    if not (form.get("reason") or "").strip():
        raise InvalidSubmission("reason", "a QA label needs a reason (at most 50 characters)")
    try:
        label = Verdict(form.get("verdict") or "")
    except ValueError:
        raise InvalidSubmission("verdict", "choose safe, controversial or unsafe") from None
    outcome = ReviewOutcome.CONFIRM if label is first else ReviewOutcome.CORRECT
    return {**form, "outcome": outcome.value, "verdict": label.value}


# --- what a decision produces -----------------------------------------------------------------


def review_event(
    task: Task,
    sub: Submission,
    *,
    stage: ReviewStage,
    reviewer: str,
    late: bool,
    at: datetime,
) -> Review:
    ident = review_id(task.task_id, stage, reviewer)
    return Review(
        event_id=ident,
        produced_at=at,
        review_id=ident,
        task_id=task.task_id,
        post_id=task.post_id,
        post_event_id=task.post_event_id,
        tenant=task.tenant,
        decision_id=task.decision_id,
        content_key=task.content_key,
        policy=task.policy,
        outcome=sub.outcome,
        stage=stage,
        verdict=sub.verdict,
        categories=sub.categories,
        reason=sub.reason,
        tags=sub.tags,
        reviewer=reviewer,
        model_verdict=task.model_verdict,
        model_confidence=task.confidence,
        model=task.model,
        adapter=task.adapter,
        refusal=sub.refusal,
        model_refusal=task.model_refusal,
        late=late,
        reviewed_at=at,
    )


def human_reason(sub: Submission, late: bool) -> str:
    said = "confirmed the model" if sub.outcome is ReviewOutcome.CONFIRM else "corrected the model"
    why = f": {sub.reason}" if sub.reason else ""
    when = " after the SLA expired" if late else ""
    return f"human review {said} ({sub.verdict.value}){when}{why}"


def human_decision(
    task: Task, sub: Submission, pack: PolicyPack | None, *, late: bool, at: datetime
) -> Decision:
    """The human verdict as a decision (`source` human): unsafe blocks, safe allows,
    controversial follows the pack (see `verdict.decisions.human_action`)."""
    return Decision.make(
        decision_id=human_decision_id(task.task_id),
        at=at,
        post_id=task.post_id,
        post_event_id=task.post_event_id,
        tenant=task.tenant,
        verdict=sub.verdict,
        action=human_action(pack, sub.verdict),
        categories=sub.categories,
        reason=human_reason(sub, late),
        rule="human_review:late" if late else "human_review",
        source=Source.HUMAN,
        model=task.model,
        adapter=task.adapter,
        policy=task.policy,
        content_key=task.content_key,
        refusal=human_refusal(task, sub),
    )


def human_refusal(task: Task, sub: Submission) -> bool | None:
    """A response's refusal on what the human decided: the reviewer's label where given, else
    the model's, which the reviewer left standing."""
    return sub.refusal if sub.refusal is not None else task.model_refusal


def human_verdict_entry(task: Task, sub: Submission, *, late: bool, at: datetime) -> CachedVerdict:
    """The sticky cache entry: later posts with this content get the human verdict."""
    return CachedVerdict(
        verdict=sub.verdict,
        categories=sub.categories,
        reason=human_reason(sub, late)[:200],
        source=Source.HUMAN,
        model=task.model,
        adapter=task.adapter,
        refusal=human_refusal(task, sub),
        decided_at=at,
    )


def assignment(
    task: Task, event: AssignmentEvent, reviewer: str | None, at: datetime
) -> ReviewAssignment:
    return ReviewAssignment(
        event_id=assignment_event_id(task.task_id, event, reviewer, at),
        produced_at=at,
        task_id=task.task_id,
        post_id=task.post_id,
        tenant=task.tenant,
        event=event,
        reviewer=reviewer if event is AssignmentEvent.ASSIGNED else None,
        at=at,
    )


# --- display ----------------------------------------------------------------------------------


def countdown(deadline: datetime, now: datetime) -> str:
    """`1h 05m left`, `4m 10s left`, or `expired 3m ago`: what the queue shows."""
    seconds = int((deadline - now).total_seconds())
    text = duration(abs(seconds))
    return f"{text} left" if seconds >= 0 else f"expired {text} ago"


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


@dataclass(frozen=True, slots=True)
class Agreement:
    compared: int
    agreed: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def agreement(pairs: Iterable[tuple[Verdict, Verdict]]) -> Agreement:
    """QA agreement: the share of re-reviews whose label equals the first review's."""
    compared = agreed = 0
    for first, qa in pairs:
        compared += 1
        agreed += first is qa
    return Agreement(compared, agreed)
