"""Typed models of the events on the wire, mirroring the JSON Schemas in `schemas/`.

The schemas are the source of truth (a contract test keeps both in step). Every event is a
flat JSON object with an envelope (`schema_version` "MAJOR.MINOR", `event_id`, `produced_at`)
and its payload. Unknown optional fields are tolerated so producers can add fields; an unknown
major version is rejected with a reason that sends the record to the DLQ. Wire format is
orjson; pydantic validates.

What a string may hold is decided here, once, for every string field of every event: no C0
control character (U+0000-U+001F), no DEL or C1 control (U+007F-U+009F) and no lone surrogate
(U+D800-U+DFFF); free text (a post's text and prompt, reasons, summaries, details) may also
hold tab, LF and CR. A record breaking it is rejected as `forbidden_character`, so nothing
downstream (PostgreSQL refuses U+0000, Redis clients refuse surrogates) ever sees one. Text
longer than the deployment's `max_text_chars` is rejected by `within_text_limit`, which every
consumer of posts and score requests calls.
"""

from __future__ import annotations

import enum
import functools
import re
import types
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeVar, Union, get_args, get_origin

import orjson
from annotated_types import MaxLen
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from guardstream.contracts.categories import CategoryDef
from guardstream.contracts.errors import PermanentError

SCHEMA_MAJOR = 1
# 1.1 (additive): graded actions `limit`, `warn`, `remove`, `hold`; a decision's optional
# `author_history` (the figures a pack rule read); a score request's optional `author_id`; a DLQ
# record's `payload_redacted` (its payload is bounded by `dlq_payload_max_bytes` since 1.1).
# A 1.0 reader of `moderation.actions.review.v1` refuses a `hold` decision (unknown action),
# so review readers are upgraded before a pack uses `hold`; the other new actions travel on
# topics of their own, which 1.0 readers do not subscribe to (docs/concepts/policy-rules.md).
# 1.2 (additive): a decision's optional `arm` (`control` / `candidate`) when its tenant's pack
# runs an A/B experiment (docs/concepts/policy-rules.md#ab-experiments). Absent otherwise; a
# 1.1 reader ignores it (decisions are read with extra fields ignored), no topic changes.
SCHEMA_VERSION = "1.2"

# pydantic checks patterns in Rust, where a lone surrogate is no string at all: any field with
# one of these patterns rejects surrogates too (`string_unicode`), and orjson never parses one.
LINE = r"^[^\x00-\x1f\x7f-\x9f]*$"  # ids, names, labels: one line of printable text
FREE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"  # may also hold \t \n \r
_CHARACTER_PATTERNS = frozenset((LINE, FREE_TEXT))
# The same rule for text checked before an event is built (a reviewer's reason, say), so
# a person hears what is wrong instead of the event failing its contract.
_FORBIDDEN_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_IN_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def allowed_characters(value: str, *, free_text: bool = False) -> bool:
    """Whether `value` keeps the character rule (`FREE_TEXT` when `free_text`, else `LINE`)."""
    forbidden = _FORBIDDEN_IN_FREE_TEXT if free_text else _FORBIDDEN_IN_LINE
    return forbidden.search(value) is None


Line = Annotated[str, Field(pattern=LINE)]
FreeText = Annotated[str, Field(pattern=FREE_TEXT)]
Id = Annotated[Line, Field(min_length=1, max_length=128)]
Category = Annotated[Line, Field(min_length=1, max_length=64)]
Categories = Annotated[tuple[Category, ...], Field(max_length=32)]
Tenant = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
ContentKey = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Confidence = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]


# Years every consumer can do arithmetic on (SLA deadlines, UTC conversion, PostgreSQL's
# timestamptz) without overflowing: 9999-12-31 plus an SLA is no datetime at all. The year as
# written is checked, as the schemas' pattern checks it.
YEARS = range(1970, 9000)


def _timestamp_text(value: object) -> object:
    # JSON Schema says date-time *string*; lax pydantic would also take epoch numbers.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("timestamps are RFC 3339 strings")  # noqa: TRY004
    if isinstance(value, str):
        year = int(value[:4]) if value[:4].isdigit() else None
    else:
        year = value.year if isinstance(value, datetime) else None
    if year is not None and year not in YEARS:
        raise ValueError(f"timestamps lie in the years {YEARS.start}-{YEARS.stop - 1}")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text)]


class Verdict(enum.StrEnum):
    SAFE = "safe"
    CONTROVERSIAL = "controversial"
    UNSAFE = "unsafe"


class Action(enum.StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    REVIEW = "review"
    # Graded actions (schema 1.1), chosen only by a pack's `rules`:
    LIMIT = "limit"  # publish with reduced distribution (限流)
    WARN = "warn"  # publish and notify the author (提醒)
    REMOVE = "remove"  # take down something already published (强制下架)
    HOLD = "hold"  # keep unpublished until a person has reviewed it (a review item)


# Actions that put the post in front of a person: both go to the review queue and its SLA.
REVIEW_ACTIONS = frozenset((Action.REVIEW, Action.HOLD))


class Arm(enum.StrEnum):
    """Which side of a pack's A/B experiment decided a post (schema 1.2)."""

    CONTROL = "control"  # the pack in force, which names the experiment
    CANDIDATE = "candidate"  # the candidate pack it sends a share of the authors to


class Source(enum.StrEnum):
    MODEL = "model"
    CACHE = "cache"
    HUMAN = "human"
    SLA_TIMEOUT = "sla_timeout"
    RULE = "rule"


class LangSource(enum.StrEnum):
    """Where an event's `lang` came from."""

    GIVEN = "given"  # the post's producer set it
    DETECTED = "detected"  # triage found it in the text (`und`: it could not tell)


class Kind(enum.StrEnum):
    PROMPT = "prompt"
    RESPONSE = "response"


def utcnow() -> datetime:
    return datetime.now(UTC)


class ContractError(PermanentError, ValueError):
    """A record that no retry can fix. `reason` is a stable DLQ code; `detail` has no payload."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Annotated[str, Field(pattern=r"^1\.[0-9]+$")] = SCHEMA_VERSION
    event_id: Id
    produced_at: Timestamp

    def to_json(self) -> bytes:
        """The wire form: compact UTF-8 JSON, absent (None) fields left out. pydantic's own
        serialiser writes the bytes `orjson.dumps(self.model_dump(mode="json", ...))` wrote
        before (floats, escapes, timestamps alike; pinned by a unit test) without building
        the intermediate dict: 3 µs for a decision instead of 9."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

    @classmethod
    def from_json(cls, raw: bytes | None) -> Self:
        """Parse and validate one record; raises `ContractError` with a DLQ reason."""
        if raw is None:
            raise ContractError("invalid_json", "record has no value (tombstone)")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "high surrogate" in exc.msg or "low surrogate" in exc.msg:  # a `\udXXX` escape
                raise ContractError("forbidden_character", f"lone surrogate ({exc.msg})") from None
            raise ContractError("invalid_json", f"not valid UTF-8 JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ContractError("invalid_json", "top level is not an object")
        version = data.get("schema_version")
        if not isinstance(version, str) or not version.split(".", 1)[0].isdigit():
            raise ContractError("invalid_schema", "schema_version missing or malformed")
        if int(version.split(".", 1)[0]) != SCHEMA_MAJOR:
            raise ContractError(
                "unsupported_schema_version",
                f"major version {version.split('.', 1)[0]} is not {SCHEMA_MAJOR}",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ContractError(rejection_reason(exc), describe_errors(exc)) from None


def rejection_reason(exc: ValidationError) -> str:
    """`forbidden_character` when a string broke the character rule, else `invalid_schema`."""
    for err in exc.errors(include_input=False, include_url=False):
        if err["type"] == "string_unicode" or (
            err["type"] == "string_pattern_mismatch"
            and err.get("ctx", {}).get("pattern") in _CHARACTER_PATTERNS
        ):
            return "forbidden_character"
    return "invalid_schema"


def describe_errors(exc: ValidationError, limit: int = 5) -> str:
    """Field paths and messages only: user text must never leak into a DLQ reason or a log."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


@functools.cache
def max_length(model: type[BaseModel], field: str) -> int:
    """The `max_length` the contract gives a text field of `model` (optional or not): every
    truncation takes its limit from here, so a cap can never drift from the contract."""
    limits = list(_max_lengths(model.model_fields[field].metadata))
    limits += _annotation_max_lengths(model.model_fields[field].annotation)
    if not limits:
        raise TypeError(f"{model.__name__}.{field} declares no max_length")
    return min(limits)


def clip(model: type[BaseModel], field: str, text: str) -> str:
    """`text` cut to the length `model`'s `field` admits: for explanations, which are worth
    less than the event that carries them (never for ids, which must fail whole)."""
    return text[: max_length(model, field)]


def _max_lengths(metadata: Iterable[object]) -> Iterator[int]:
    for item in metadata:
        if isinstance(item, MaxLen):
            yield item.max_length
        elif isinstance(item, FieldInfo):
            yield from _max_lengths(item.metadata)


def _annotation_max_lengths(annotation: object) -> Iterator[int]:
    # Where pydantic leaves the constraints on the type: `Annotated[...] | None` fields.
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        yield from _max_lengths(metadata)
        yield from _annotation_max_lengths(base)
    elif origin is Union or origin is types.UnionType:
        for arg in get_args(annotation):
            yield from _annotation_max_lengths(arg)


class Post(Envelope):
    """A piece of user content to moderate (`posts.v1`)."""

    post_id: Id
    tenant: Tenant
    author_id: Id
    text: Annotated[FreeText, Field(min_length=1)]
    kind: Kind = Kind.PROMPT
    # Response moderation: the prompt the response answers (Qwen3Guard judges the pair).
    prompt: FreeText | None = None
    lang: Annotated[Line, Field(max_length=35)] | None = None
    region: Annotated[Line, Field(max_length=35)] | None = None
    created_at: Timestamp

    @model_validator(mode="after")
    def _response_needs_prompt(self) -> Self:
        if self.kind is Kind.RESPONSE and not self.prompt:
            raise ValueError("kind 'response' needs the originating 'prompt'")
        return self


class ScoreRequest(Envelope):
    """A cache miss handed from triage to the scorer (`moderation.score-requests.v1`)."""

    post_id: Id
    post_event_id: Id
    tenant: Tenant
    kind: Kind
    text: FreeText  # normalised
    prompt: FreeText | None = None  # normalised
    # The post's language: its own `lang` or, without one, the one triage detected; an
    # optional field added later, `lang_source` says which (absent: an older triage's, given).
    lang: Annotated[Line, Field(max_length=35)] | None = None
    lang_source: LangSource | None = None
    region: Annotated[Line, Field(max_length=35)] | None = None
    content_key: ContentKey
    policy: Id
    received_at: Timestamp
    # The policy pack's domain tags / region hint, put before the text (part of the key).
    prompt_prefix: FreeText | None = None
    # Near-duplicate index scope once scored; absent when the pack does not reuse variants.
    near_scope: ContentKey | None = None
    # The LoRA adapter that must score it (part of the content key); absent: the base model.
    adapter: Id | None = None
    # The post's author (schema 1.1), so the scorer can read and update the author's history
    # for pack rules; absent from older triages' requests (rules then see no history).
    author_id: Id | None = None
    # The policy pack's categories when they are not Qwen3Guard's nine (a digest of their
    # prompt block is in the content key); absent: the nine. Added in 1.1, ignored by older
    # scorers (which then judge with the nine: the key differs, so no verdict is confused).
    categories: Annotated[tuple[CategoryDef, ...], Field(min_length=1, max_length=32)] | None = None


Texted = TypeVar("Texted", Post, ScoreRequest)


def within_text_limit(event: Texted, max_chars: int) -> Texted:
    """`event` if its text and prompt hold at most `max_chars` characters (the deployment's
    `max_text_chars`); raises `ContractError` `text_too_long` otherwise. Every consumer of
    posts and score requests calls it, so a record one process refuses is refused by all."""
    for name, value in (("text", event.text), ("prompt", event.prompt)):
        if value is not None and len(value) > max_chars:
            raise ContractError(
                "text_too_long", f"{name} has {len(value)} characters, limit {max_chars}"
            )
    return event


class AuthorHistory(BaseModel):
    """An author's recent record within one tenant, as a pack rule read it (schema 1.1):
    how many of the author's posts were decided unsafe / controversial by the model, and
    confirmed unsafe by a person, in the last day, 7 days and 30 days."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    unsafe_1d: Annotated[StrictInt, Field(ge=0)] = 0
    unsafe_7d: Annotated[StrictInt, Field(ge=0)] = 0
    unsafe_30d: Annotated[StrictInt, Field(ge=0)] = 0
    controversial_1d: Annotated[StrictInt, Field(ge=0)] = 0
    controversial_7d: Annotated[StrictInt, Field(ge=0)] = 0
    controversial_30d: Annotated[StrictInt, Field(ge=0)] = 0
    confirmed_unsafe_1d: Annotated[StrictInt, Field(ge=0)] = 0
    confirmed_unsafe_7d: Annotated[StrictInt, Field(ge=0)] = 0
    confirmed_unsafe_30d: Annotated[StrictInt, Field(ge=0)] = 0


class Decision(Envelope):
    """What to do with a post (`moderation.actions.<action>.v1`; `hold` on the review topic)."""

    decision_id: Id
    post_id: Id
    post_event_id: Id
    tenant: Tenant
    verdict: Verdict
    action: Action
    categories: Categories = ()
    confidence: Confidence | None = None
    refusal: StrictBool | None = None
    # The model judged a shortened text (longer than its input window: head and tail kept).
    # Absent when it saw the whole text, or no model judged it.
    input_truncated: StrictBool | None = None
    reason: Annotated[FreeText, Field(min_length=1, max_length=500)]
    rule: Annotated[Line, Field(max_length=120)] | None = None
    source: Source
    model: Id
    adapter: Id | None = None
    policy: Id
    content_key: ContentKey
    # Cache decisions for a near-duplicate: the content key whose verdict was reused.
    matched_content_key: ContentKey | None = None
    decided_at: Timestamp
    # The post's language as triage knew it (its own `lang`, else detected; `und`: could not
    # tell) and which; optional fields added later: absent from older producers' decisions
    # and from human and SLA decisions (no post text at hand there).
    lang: Annotated[Line, Field(max_length=35)] | None = None
    lang_source: LangSource | None = None
    # The author's history a pack rule read for this decision (schema 1.1); absent when the
    # pack's rules read none.
    author_history: AuthorHistory | None = None
    # The experiment arm whose pack decided (schema 1.2); absent when the post's pack runs no
    # A/B experiment, and on human and SLA decisions.
    arm: Arm | None = None

    @classmethod
    def make(
        cls,
        *,
        decision_id: str,
        at: datetime,
        post_id: str,
        post_event_id: str,
        tenant: str,
        verdict: Verdict,
        action: Action,
        reason: str,
        rule: str,
        source: Source,
        model: str,
        adapter: str | None,
        policy: str,
        content_key: str,
        categories: tuple[str, ...] = (),
        confidence: float | None = None,
        refusal: bool | None = None,
        input_truncated: bool = False,
        matched_content_key: str | None = None,
        decided_at: datetime | None = None,
        lang: str | None = None,
        lang_source: LangSource | None = None,
        author_history: AuthorHistory | None = None,
        arm: Arm | None = None,
    ) -> Self:
        """The one maker of decisions, whichever path decides (model, cache, rule, human, SLA
        timer). A decision is its own event (`event_id` is `decision_id`: made again, it is
        the same event), produced `at`, decided `at` unless it reuses an earlier verdict
        (`decided_at`). Reason and rule are cut to the contract's own limits: a long
        explanation must never cost the decision."""
        # The validator itself, as `to_json` uses the serialiser: the same validation as
        # `cls(...)` without `BaseModel.__init__`'s frame, which pays for this one (triage
        # makes a decision per cache hit).
        made: Self = cls.__pydantic_validator__.validate_python(
            {
                "event_id": decision_id,
                "produced_at": at,
                "decision_id": decision_id,
                "post_id": post_id,
                "post_event_id": post_event_id,
                "tenant": tenant,
                "verdict": verdict,
                "action": action,
                "categories": categories,
                "confidence": confidence,
                "refusal": refusal,
                "input_truncated": True if input_truncated else None,
                "reason": reason[: max_length(cls, "reason")],
                "rule": rule[: max_length(cls, "rule")],
                "source": source,
                "model": model,
                "adapter": adapter,
                "policy": policy,
                "content_key": content_key,
                "matched_content_key": matched_content_key,
                "decided_at": at if decided_at is None else decided_at,
                "lang": lang,
                "lang_source": lang_source,
                "author_history": author_history,
                "arm": arm,
            }
        )
        return made


class ShadowRecord(Envelope):
    """A shadow candidate adapter's verdict on live traffic beside the serving adapter's
    (`moderation.shadow.v1`, key = content_key). Evidence for promotion, never actioned:
    nothing reads it to allow, block or review a post.

    `content_key` is the serving content key (the one decisions, reviews and the archive
    carry), so later human labels join on it. `event_id` is deterministic per content key and
    candidate: a key scored again in shadow is recognisable as the same observation.
    """

    post_id: Id
    post_event_id: Id
    tenant: Tenant
    content_key: ContentKey
    policy: Id
    model: Id
    serving_adapter: Id | None = None  # absent: the base model serves
    serving_verdict: Verdict
    serving_categories: Categories = ()
    serving_confidence: Confidence | None = None
    candidate_adapter: Id
    candidate_verdict: Verdict
    candidate_categories: Categories = ()
    candidate_confidence: Confidence | None = None
    # The serving verdict went on to a larger model (cascade): it was not the final decision.
    escalated: StrictBool = False
    received_at: Timestamp  # when triage received the post
    serving_decided_at: Timestamp
    candidate_decided_at: Timestamp


class Origin(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    topic: Annotated[Line, Field(min_length=1)]
    partition: Annotated[StrictInt, Field(ge=0)]
    offset: Annotated[StrictInt, Field(ge=0)]
    timestamp_ms: StrictInt | None = None
    key_b64: Base64 | None = None


class DlqRecord(Envelope):
    """A record no process could accept, kept whole with where it came from and why."""

    origin: Origin
    consumer: Id
    reason: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    detail: Annotated[FreeText, Field(max_length=2000)]
    attempts: Annotated[StrictInt, Field(ge=1)]
    payload_b64: Base64
    payload_size: Annotated[StrictInt, Field(ge=0)]
    payload_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    payload_truncated: StrictBool = False
    # Schema 1.1: personal data in the kept payload replaced by placeholders
    # (`contracts.redaction`); the digest is always the original's.
    payload_redacted: StrictBool = False


class ReviewOutcome(enum.StrEnum):
    CONFIRM = "confirm"  # the model's verdict stands
    CORRECT = "correct"  # the reviewer changed the label


class ReviewStage(enum.StrEnum):
    FIRST = "first"  # the on-call reviewer's decision
    QA = "qa"  # a senior reviewer's re-review (QA audit); does not re-action the post


REVIEW_REASON_MAX = 50  # the seeds: a correction's reason is at most 50 characters


class Review(Envelope):
    """A human decision on a contested post (`moderation.reviews.v1`, key = post_id).

    The review console publishes it; the SLA app takes the item out of its SLA, and the human
    verdict is actioned and overrides the verdict cache for `content_key`.
    """

    review_id: Id  # deterministic per task and stage: a re-published review is detectable
    task_id: Id
    post_id: Id
    post_event_id: Id
    tenant: Tenant
    decision_id: Id  # the decision that sent the post to review
    content_key: ContentKey
    policy: Id
    outcome: ReviewOutcome
    stage: ReviewStage = ReviewStage.FIRST
    verdict: Verdict  # the human's label
    categories: Categories = ()
    # Required when correcting (the seeds' ③ 填写理由), at most 50 characters.
    reason: Annotated[FreeText, Field(min_length=1, max_length=REVIEW_REASON_MAX)] | None = None
    tags: Annotated[
        tuple[Annotated[Line, Field(min_length=1, max_length=40)], ...], Field(min_length=1)
    ]
    reviewer: Id  # pseudonymous reviewer id, never a name or e-mail
    model_verdict: Verdict
    model_confidence: Confidence | None = None
    model: Id | None = None
    adapter: Id | None = None
    # Response moderation: did the assistant refuse? The reviewer's label (None: not given)
    # and the model's `Refusal:` label.
    refusal: StrictBool | None = None
    model_refusal: StrictBool | None = None
    # Decided after the SLA app downgraded the item: the human verdict still wins.
    late: StrictBool = False
    reviewed_at: Timestamp

    @model_validator(mode="after")
    def _correction_needs_reason(self) -> Self:
        if self.outcome is ReviewOutcome.CORRECT and not self.reason:
            raise ValueError("a correction needs a reason (at most 50 characters)")
        return self


class AssignmentEvent(enum.StrEnum):
    ASSIGNED = "assigned"  # a reviewer holds the task (round-robin or claimed)
    RELEASED = "released"  # given back, or the claim lock expired


class ReviewAssignment(Envelope):
    """The console assigned or released a review task (`moderation.review-assignments.v1`)."""

    task_id: Id
    post_id: Id
    tenant: Tenant
    event: AssignmentEvent
    reviewer: Id | None = None  # pseudonymous; absent on release
    at: Timestamp


class SlaEventKind(enum.StrEnum):
    WARNING = "warning"  # a share of the review deadline has passed
    EXPIRED = "expired"  # deadline passed unreviewed: downgraded to safe
    ASSIGNMENT_BREACH = "assignment_breach"  # nobody was assigned in time (alert only)
    LATE_REVIEW = "late_review"  # a human decided after expiry; the human verdict wins


class SlaEvent(Envelope):
    """What the SLA app did about one contested item (`moderation.sla-events.v1`, key post_id).

    The review console marks the task (warning, expired badge); reporting counts them.
    """

    sla_event_id: Id  # deterministic per (post, decision, kind): restarts never double it
    post_id: Id
    tenant: Tenant
    decision_id: Id  # the decision that sent the post to review
    kind: SlaEventKind
    deadline: Timestamp
    # The downgrade decision (`expired`), so the console can link to it.
    downgrade_decision_id: Id | None = None
    at: Timestamp


class AlertSeverity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(Envelope):
    """An operational alert (`moderation.alerts.v1`, key = alert_id): SLA, QA, pipeline."""

    alert_id: Id  # deterministic: the same condition on the same item raises one alert
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    severity: AlertSeverity
    tenant: Tenant | None = None
    post_id: Id | None = None
    summary: Annotated[FreeText, Field(min_length=1, max_length=500)]  # no post text or PII
    labels: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Annotated[Line, Field(max_length=200)]
    ] = Field(default_factory=dict)
    raised_at: Timestamp


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


Label = Literal["Safe", "Unsafe", "Controversial"]
