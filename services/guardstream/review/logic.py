"""The review console's rules, without I/O: who may do what, what a valid submission is, the
events a decision produces, and how an SLA is shown.

Everything here is deterministic given its inputs (ids are hashes, times are passed in), so the
API, the console and the tests agree on one meaning of "a review".
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from guardstream.contracts import ids
from guardstream.contracts.categories import unknown_category
from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import (
    REVIEW_REASON_MAX,
    Action,
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
from guardstream.contracts.identity import HasIdentity, PostIdentity
from guardstream.contracts.ids import review_task_id, stable_id
from guardstream.policy import PolicyPack
from guardstream.policy.pack import ReasonRequired
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
class Task(HasIdentity):
    task_id: str
    identity: PostIdentity  # also read as task.tenant, task.post_id, …
    lang: str | None
    region: str | None
    decision_id: str  # the decision that sent the post to review
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
    input_truncated: bool = False  # the model judged a shortened text (longer than its window)
    # The provisional action that sent the post here: `hold` keeps it unpublished until a
    # person decides (an expired deadline leaves it held), `review` does not.
    action: Action = Action.REVIEW

    @property
    def held(self) -> bool:
        return self.action is Action.HOLD


# One task per post and policy of a tenant (`contracts.ids.review_task_id`, shared with the API).
task_id = review_task_id


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


class SubmissionForm(BaseModel):
    """What a reviewer submitted (the API's body, or a console form read by `read_form`),
    typed at the edge. The service checks it against its task (`validate_submission`)."""

    model_config = ConfigDict(frozen=True)

    outcome: ReviewOutcome | None = None  # None: not chosen (a blind QA label works it out)
    verdict: Verdict | None = None
    reason: str | None = None
    tags: tuple[str, ...] = ()
    categories: tuple[str, ...] | None = None  # None: the model's
    refusal: bool | None = None  # response items: did the assistant refuse? None: not given


@dataclass(frozen=True, slots=True)
class Submission:
    """A submission valid for its task: what the review and the human decision are made of."""

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


def read_form(
    *,
    outcome: object = None,
    verdict: object = None,
    reason: object = None,
    tags: Iterable[object] = (),
    categories: Iterable[object] | None = None,
    refusal: object = None,
) -> SubmissionForm:
    """A console form's strings as a `SubmissionForm`: an empty field is not given; a value
    outside its choices is an `InvalidSubmission` naming the field."""
    try:
        chosen = ReviewOutcome(str(outcome)) if outcome else None
    except ValueError:
        raise InvalidSubmission("outcome", "choose confirm or correct") from None
    try:
        label = Verdict(str(verdict)) if verdict else None
    except ValueError:
        raise InvalidSubmission("verdict", "choose safe, controversial or unsafe") from None
    return SubmissionForm(
        outcome=chosen,
        verdict=label,
        reason=reason if isinstance(reason, str) else None,
        tags=tuple(t for t in tags if isinstance(t, str)),
        categories=None
        if categories is None
        else tuple(c for c in categories if isinstance(c, str)),
        refusal=parse_refusal(refusal),
    )


def validate_submission(
    form: SubmissionForm,
    *,
    model_verdict: Verdict,
    model_categories: Sequence[str],
    allowed_tags: Sequence[str],
    is_response: bool = False,
    allowed_categories: Sequence[str] | None = None,
    reason_required: ReasonRequired = ReasonRequired.ALWAYS,
) -> Submission:
    """The seeds' three actions: ① confirm ② correct the label ③ a reason (at most 50
    characters; required always, or when correcting if the pack relaxes it:
    `reason_required`), plus at least one quick tag from the configured list, and categories
    from `allowed_categories` (the task's pack's) or the model's.
    A response item may also carry the reviewer's refusal label (did the assistant refuse?)."""
    chosen = form.outcome
    if chosen is None:
        raise InvalidSubmission("outcome", "choose confirm or correct")
    # Checked before trimming: NEL (U+0085) and the C0 separators count as whitespace to
    # `strip`, and a hostile character is refused wherever it stands, not quietly trimmed.
    if form.reason is not None and not allowed_characters(form.reason, free_text=True):
        raise InvalidSubmission("reason", "control characters are not allowed")
    text = (form.reason or "").strip() or None
    if text is not None and len(text) > REVIEW_REASON_MAX:
        raise InvalidSubmission(
            "reason",
            f"{len(text)} characters, {len(text) - REVIEW_REASON_MAX} over the limit of"
            f" {REVIEW_REASON_MAX}: shorten it (nothing was cut)",
        )
    if chosen is ReviewOutcome.CONFIRM:
        if form.verdict is not None and form.verdict is not model_verdict:
            raise InvalidSubmission("verdict", "confirming keeps the model's label; use correct")
        if text is None and reason_required is ReasonRequired.ALWAYS:
            raise InvalidSubmission("reason", reason_rule(reason_required))
        label = model_verdict
    else:
        if form.verdict is None:
            raise InvalidSubmission("verdict", "choose safe, controversial or unsafe")
        label = form.verdict
        if label is model_verdict:
            raise InvalidSubmission("verdict", "a correction must change the model's label")
        if text is None:
            raise InvalidSubmission(
                "reason", f"a correction needs a reason (at most {REVIEW_REASON_MAX} characters)"
            )
    picked = tuple(dict.fromkeys(t.strip() for t in form.tags if t.strip()))
    if not picked:
        raise InvalidSubmission("tags", "pick at least one quick tag")
    unknown = [t for t in picked if t not in allowed_tags]
    if unknown:
        raise InvalidSubmission("tags", f"{len(unknown)} tag(s) not in the configured list")
    categories = form.categories
    cats = tuple(dict.fromkeys(c.strip() for c in (categories or ()) if c.strip()))
    if categories is None or (chosen is ReviewOutcome.CONFIRM and not cats):
        cats = tuple(model_categories)
    if label is Verdict.SAFE:
        cats = ()
    if not all(allowed_characters(c) for c in cats):
        raise InvalidSubmission("categories", "control characters are not allowed")
    if any(len(c) > 64 for c in cats) or len(cats) > 16:
        raise InvalidSubmission("categories", "at most 16 categories of 64 characters")
    # A reviewer picks from the task's pack; the model's own (an `other:` one included) may be
    # kept as they are.
    if allowed_categories is not None:
        for name in cats:
            if name not in allowed_categories and name not in model_categories:
                raise InvalidSubmission("categories", unknown_category(name, allowed_categories))
    if form.refusal is not None and not is_response:
        raise InvalidSubmission("refusal", "only a response (an assistant's answer) has one")
    return Submission(chosen, label, cats, text, picked, form.refusal)


def reason_rule(required: ReasonRequired) -> str:
    """The pack's reason rule in words: the console shows it beside the reason box and the
    service refuses a decision without a required reason with it."""
    if required is ReasonRequired.ALWAYS:
        return f"every decision needs a reason (at most {REVIEW_REASON_MAX} characters)"
    return f"a correction needs a reason (at most {REVIEW_REASON_MAX} characters)"


def blind_form(form: SubmissionForm, first: Verdict) -> SubmissionForm:
    """A blind QA submission (a label, a reason, tags) as a confirm / correct of the first
    label. The reason is required either way: the senior wrote it before knowing whether they
    agree, and it is what the first reviewer is coached with."""
    if not (form.reason or "").strip():
        raise InvalidSubmission("reason", "a QA label needs a reason (at most 50 characters)")
    if form.verdict is None:
        raise InvalidSubmission("verdict", "choose safe, controversial or unsafe")
    outcome = ReviewOutcome.CONFIRM if form.verdict is first else ReviewOutcome.CORRECT
    return form.model_copy(update={"outcome": outcome})


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
        **task.identity.fields(),
        decision_id=task.decision_id,
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
        **task.identity.fields(),
        verdict=sub.verdict,
        action=human_action(pack, sub.verdict),
        categories=sub.categories,
        reason=human_reason(sub, late),
        rule="human_review:late" if late else "human_review",
        source=Source.HUMAN,
        model=task.model,
        adapter=task.adapter,
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


PREVIEW_CHARS = 120  # the queue's preview of a post
# Characters that change how the text around them is laid out, not what it says: bidi
# embeddings, overrides and isolates (an override turns "gpj.exe" into "exe.jpg" and runs on into
# the next cell), zero-width joiners and marks, the byte-order mark.
_LAYOUT_CONTROLS = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_SURROGATES = re.compile("[\ud800-\udfff]")


def text_preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A post's first `limit` characters on one line, for the queue: control characters and
    runs of whitespace become one space, layout controls are dropped, a lone surrogate (which
    UTF-8 cannot carry) becomes U+FFFD, and "…" marks a cut. HTML escaping is the template's."""
    flat = _SURROGATES.sub("\ufffd", _LAYOUT_CONTROLS.sub("", text))
    flat = _BLANKS.sub(" ", flat).strip()
    if len(flat) <= limit:
        return flat
    return flat[:limit].rstrip() + "…"


# A long post on one screen: its opening, then its end (the scorer keeps both too), where
# harm hidden after benign padding sits; never behind a click.
LONG_TEXT_HEAD = 300  # characters shown before a long post's folded middle
LONG_TEXT_TAIL = 500  # and after it
LONG_TEXT_MIN_FOLD = 400  # a shorter middle is not worth a click: the post is shown whole
_WORD_SLACK = 80  # how far a cut moves to fall on whitespace


@dataclass(frozen=True, slots=True)
class LongText:
    """A post as the task page shows it: `head` + `middle` + `tail` is the whole text; an
    empty `middle` means it is shown whole (in `head`)."""

    head: str
    middle: str
    tail: str


def long_text(
    text: str,
    *,
    head: int = LONG_TEXT_HEAD,
    tail: int = LONG_TEXT_TAIL,
    min_fold: int = LONG_TEXT_MIN_FOLD,
) -> LongText:
    """`text` split into its head, a middle the reviewer unfolds on demand, and its tail; the
    cuts move back (head) or forward (tail) by up to a few words to fall after a line break or
    a space."""
    if len(text) <= head + tail + min_fold:
        return LongText(text, "", "")
    cut = head
    for blank in ("\n", " "):  # a line break if there is one near, else a space
        found = text.rfind(blank, head - _WORD_SLACK, head)
        if found > 0:
            cut = found + 1
            break
    start = len(text) - tail
    for blank in ("\n", " "):
        found = text.find(blank, start, start + _WORD_SLACK)
        if found >= 0:
            start = found + 1
            break
    return LongText(text[:cut], text[cut:start], text[start:])


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
