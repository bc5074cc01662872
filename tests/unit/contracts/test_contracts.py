"""The JSON Schemas in schemas/ and the Python models must agree on every example."""

import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from guardstream.contracts.events import (
    Alert,
    ContractError,
    Decision,
    DlqRecord,
    Envelope,
    FreeText,
    Line,
    Post,
    Review,
    ReviewAssignment,
    ReviewOutcome,
    ScoreRequest,
    ShadowRecord,
    SlaEvent,
    Verdict,
    allowed_characters,
    within_text_limit,
)
from guardstream.review.logic import (
    InvalidSubmission,
    Submission,
    SubmissionForm,
    validate_submission,
)

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).parents[3] / "schemas"
NOW = "2026-11-22T10:00:00Z"
KEY = "0123456789abcdef0123456789abcdef"
ENV = {"schema_version": "1.0", "event_id": "e-1", "produced_at": NOW}

POST = {
    **ENV,
    "post_id": "p-1",
    "tenant": "acme",
    "author_id": "a-9",
    "text": "hello",
    "created_at": NOW,
}
SCORE_REQUEST = {
    **ENV,
    "post_id": "p-1",
    "post_event_id": "e-0",
    "tenant": "acme",
    "kind": "prompt",
    "text": "hello",
    "content_key": KEY,
    "policy": "default-v1",
    "received_at": NOW,
}
DECISION = {
    **ENV,
    "decision_id": "d-1",
    "post_id": "p-1",
    "post_event_id": "e-0",
    "tenant": "acme",
    "verdict": "unsafe",
    "action": "block",
    "categories": ["Violent"],
    "confidence": 0.97,
    "reason": "Qwen3Guard: Unsafe [Violent]",
    "source": "model",
    "model": "Qwen/Qwen3Guard-Gen-8B",
    "policy": "default-v1",
    "content_key": KEY,
    "decided_at": NOW,
}
DLQ = {
    **ENV,
    "origin": {"topic": "posts.v1", "partition": 3, "offset": 42},
    "consumer": "guardstream-triage",
    "reason": "invalid_json",
    "detail": "not JSON",
    "attempts": 1,
    "payload_b64": "e30=",
    "payload_size": 2,
    "payload_sha256": "0" * 64,
}


def drop(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


REVIEW = {
    **ENV,
    "review_id": "r-1",
    "task_id": "t-1",
    "post_id": "p-1",
    "post_event_id": "e-0",
    "tenant": "acme",
    "decision_id": "d-1",
    "content_key": KEY,
    "policy": "default@1",
    "outcome": "correct",
    "verdict": "unsafe",
    "categories": ["Unethical Acts"],
    "reason": "健康污名：把疾病归咎于群体",
    "tags": ["健康污名"],
    "reviewer": "rv-7",
    "model_verdict": "controversial",
    "model_confidence": 0.62,
    "reviewed_at": NOW,
}
ASSIGNMENT = {
    **ENV,
    "task_id": "t-1",
    "post_id": "p-1",
    "tenant": "acme",
    "event": "assigned",
    "reviewer": "rv-7",
    "at": NOW,
}
SLA_EVENT = {
    **ENV,
    "sla_event_id": "s-1",
    "post_id": "p-1",
    "tenant": "acme",
    "decision_id": "d-1",
    "kind": "expired",
    "deadline": NOW,
    "downgrade_decision_id": "d-2",
    "at": NOW,
}
ALERT = {
    **ENV,
    "alert_id": "al-1",
    "kind": "sla_breach",
    "severity": "warning",
    "tenant": "acme",
    "post_id": "p-1",
    "summary": "review SLA of 7200 s passed unreviewed; downgraded to safe",
    "labels": {"policy": "default@1"},
    "raised_at": NOW,
}

SHADOW = {
    **ENV,
    "post_id": "p-1",
    "post_event_id": "e-0",
    "tenant": "acme",
    "content_key": KEY,
    "policy": "default@1",
    "model": "Qwen/Qwen3Guard-Gen-8B",
    "serving_verdict": "controversial",
    "serving_confidence": 0.55,
    "candidate_adapter": "fb-20261125-1",
    "candidate_verdict": "safe",
    "candidate_confidence": 0.91,
    "received_at": NOW,
    "serving_decided_at": NOW,
    "candidate_decided_at": NOW,
}

# A policy pack's own category, as score requests carry it.
FRAUD = {"name": "Financial Fraud", "description": "保本高收益", "translations": {"zh": "金融欺诈"}}

CASES: list[tuple[type[Envelope], str, dict[str, Any]]] = [
    (Post, "post.v1.json", POST),
    (ScoreRequest, "score-request.v1.json", SCORE_REQUEST),
    (Decision, "decision.v1.json", DECISION),
    (DlqRecord, "dlq-record.v1.json", DLQ),
    (Review, "review.v1.json", REVIEW),
    (ReviewAssignment, "review-assignment.v1.json", ASSIGNMENT),
    (SlaEvent, "sla-event.v1.json", SLA_EVENT),
    (Alert, "alert.v1.json", ALERT),
    (ShadowRecord, "shadow-record.v1.json", SHADOW),
]


def schema_accepts(name: str, doc: dict[str, Any]) -> bool:
    schema = json.loads((SCHEMAS / name).read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return validator.is_valid(doc)


def model_accepts(model: type[Envelope], doc: dict[str, Any]) -> bool:
    try:
        model.from_json(orjson.dumps(doc))
    except ContractError:
        return False
    return True


def variants(base: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Valid and invalid variants every event shares."""
    valid = [
        base,
        {**base, "schema_version": "1.7"},
        {**base, "added_in_1_1": {"x": 1}},
        {**base, "produced_at": "2026-11-22T18:00:00+08:00"},
        {**base, "produced_at": "8999-12-31T23:59:59-14:00"},
        {**base, "produced_at": "1970-01-01T00:00:00+14:00"},
    ]
    invalid = [
        {k: v for k, v in base.items() if k != "event_id"},
        {**base, "schema_version": "2.0"},
        {**base, "schema_version": 1},
        {**base, "event_id": ""},
        {**base, "event_id": "x" * 129},
        {**base, "produced_at": "yesterday"},
        {**base, "produced_at": 1700000000},
        {**base, "produced_at": "2026-11-22T10:00:00"},  # no offset
        {**base, "produced_at": "9999-12-31T23:59:59Z"},  # a deadline after it overflows
        {**base, "produced_at": "1969-12-31T23:59:59Z"},
    ]
    return valid, invalid


SPECIFIC: dict[type[Envelope], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    Post: (
        [
            {**POST, "kind": "response", "prompt": "q?"},
            {**POST, "lang": "zh", "region": "CN"},
            {**POST, "text": "我觉得女生学不好编程"},
        ],
        [
            {**POST, "kind": "response"},
            {**POST, "kind": "response", "prompt": ""},
            {**POST, "kind": "image"},
            {**POST, "text": ""},
            {**POST, "tenant": "Acme Corp"},
            {**POST, "text": 42},
            {k: v for k, v in POST.items() if k != "author_id"},
            {**POST, "post_id": "bad\nid"},
        ],
    ),
    ScoreRequest: (
        [
            {**SCORE_REQUEST, "kind": "response", "prompt": "q"},
            {**SCORE_REQUEST, "author_id": "a-9"},  # 1.1
            {**SCORE_REQUEST, "categories": [FRAUD]},
        ],
        [
            {**SCORE_REQUEST, "content_key": "XYZ"},
            {**SCORE_REQUEST, "kind": None},
            {**SCORE_REQUEST, "author_id": ""},
            {**SCORE_REQUEST, "author_id": "a\u0000b"},
            {**SCORE_REQUEST, "categories": []},
            {**SCORE_REQUEST, "categories": [{**FRAUD, "name": "a,b"}]},
            {**SCORE_REQUEST, "categories": [{**FRAUD, "translations": {"zh": "x\ny"}}]},
            {**SCORE_REQUEST, "categories": [FRAUD] * 33},
        ],
    ),
    Decision: (
        [
            {**DECISION, "confidence": 0},
            {**DECISION, "confidence": 1, "refusal": True},
            {**DECISION, "adapter": "lora-2026-11"},
            {**DECISION, "categories": []},
            {**DECISION, "input_truncated": True},
            # 1.1: graded actions and the author history a rule read.
            *({**DECISION, "action": action} for action in ("limit", "warn", "remove", "hold")),
            {**DECISION, "action": "remove", "author_history": {"confirmed_unsafe_7d": 3}},
            # 1.2: the A/B experiment arm.
            {**DECISION, "arm": "control"},
            {**DECISION, "arm": "candidate"},
        ],
        [
            {**DECISION, "action": "ban"},
            {**DECISION, "arm": "treatment"},
            {**DECISION, "author_history": {"unsafe_7d": -1}},
            {**DECISION, "verdict": "maybe"},
            {**DECISION, "confidence": 1.5},
            {**DECISION, "confidence": "0.5"},
            {**DECISION, "source": "oracle"},
            {**DECISION, "reason": ""},
            {**DECISION, "refusal": "yes"},
            {**DECISION, "input_truncated": "yes"},
            {**DECISION, "action": "delete"},
        ],
    ),
    DlqRecord: (
        [
            {**DLQ, "payload_truncated": True},
            {**DLQ, "origin": {**DLQ["origin"], "key_b64": "cA=="}},
        ],
        [
            {**DLQ, "attempts": 0},
            {**DLQ, "reason": "Bad Reason"},
            {**DLQ, "origin": {"topic": "posts.v1", "partition": "3", "offset": 1}},
            {**DLQ, "payload_sha256": "abc"},
            {**DLQ, "origin": {"topic": "t", "partition": 0}},
        ],
    ),
    Review: (
        [
            drop({**REVIEW, "outcome": "confirm", "verdict": "controversial"}, "reason"),
            {**REVIEW, "stage": "qa", "late": True, "adapter": "lora-1"},
            {**REVIEW, "reason": "x" * 50},
        ],
        [
            drop(REVIEW, "reason"),
            {**REVIEW, "reason": "x" * 51},
            {**REVIEW, "tags": []},
            {**REVIEW, "verdict": "spam"},
            {**REVIEW, "outcome": "maybe"},
            {**REVIEW, "model_confidence": 2},
            {k: v for k, v in REVIEW.items() if k != "reviewer"},
        ],
    ),
    ReviewAssignment: (
        [drop({**ASSIGNMENT, "event": "released"}, "reviewer")],
        [{**ASSIGNMENT, "event": "stolen"}, {k: v for k, v in ASSIGNMENT.items() if k != "at"}],
    ),
    SlaEvent: (
        [drop({**SLA_EVENT, "kind": "warning"}, "downgrade_decision_id")],
        [{**SLA_EVENT, "kind": "snoozed"}, {**SLA_EVENT, "deadline": "soon"}],
    ),
    Alert: (
        [{**drop(ALERT, "tenant", "post_id"), "labels": {}}],
        [
            {**ALERT, "severity": "page"},
            {**ALERT, "kind": "SLA Breach"},
            {**ALERT, "summary": ""},
            {**ALERT, "labels": {"Bad Key": "x"}},
        ],
    ),
    ShadowRecord: (
        [
            {**SHADOW, "serving_adapter": "fb-20261118-0", "escalated": True},
            {**SHADOW, "candidate_categories": ["Violent"], "serving_categories": []},
            drop(SHADOW, "serving_confidence", "candidate_confidence"),
        ],
        [
            drop(SHADOW, "candidate_adapter"),
            drop(SHADOW, "serving_verdict"),
            {**SHADOW, "candidate_verdict": "maybe"},
            {**SHADOW, "candidate_confidence": 1.5},
            {**SHADOW, "content_key": "XYZ"},
            {**SHADOW, "escalated": "yes"},
            {**SHADOW, "serving_decided_at": "yesterday"},
        ],
    ),
}


@pytest.mark.parametrize(
    ("model", "schema", "base"), CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_models_and_schemas_agree(model: type[Envelope], schema: str, base: dict[str, Any]) -> None:
    valid, invalid = variants(base)
    more_valid, more_invalid = SPECIFIC[model]
    for doc in valid + more_valid:
        assert schema_accepts(schema, doc), doc
        assert model_accepts(model, doc), doc
    for doc in invalid + more_invalid:
        assert not schema_accepts(schema, doc), doc
        assert not model_accepts(model, doc), doc


@pytest.mark.parametrize(
    ("model", "schema", "base"), CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_serialised_models_validate_against_their_schema(
    model: type[Envelope], schema: str, base: dict[str, Any]
) -> None:
    event = model.from_json(orjson.dumps(base))
    assert schema_accepts(schema, orjson.loads(event.to_json()))
    assert model.from_json(event.to_json()) == event


def _as_orjson_wrote_it(event: Envelope) -> bytes:
    """What `to_json` was: orjson over pydantic's JSON-mode dict."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


@pytest.mark.parametrize(
    ("model", "schema", "base"), CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_to_json_writes_the_bytes_orjson_wrote(
    model: type[Envelope], schema: str, base: dict[str, Any]
) -> None:
    valid, _ = variants(base)
    for doc in [base, *valid]:
        event = model.from_json(orjson.dumps(doc))
        assert event.to_json() == _as_orjson_wrote_it(event)


def test_to_json_writes_floats_and_text_as_orjson_did() -> None:
    rng = random.Random(5)
    confidences = [0.0, 1.0, 0.1, 1e-5, 1e-7, 5e-324, 0.30000000000000004]
    confidences += [rng.random() for _ in range(2000)] + [rng.random() / 10**9 for _ in range(200)]
    texts = ["中文，标点！", "emoji 🔪🌹", "ctl \x00\x1f\x7f", 'q"b\\s/', "\u2028\u2029\ufeff"]
    base = Decision.from_json(orjson.dumps(DECISION))
    for n, confidence in enumerate(confidences):
        event = base.model_copy(
            update={"confidence": confidence, "reason": texts[n % len(texts)] * 3}
        )
        assert event.to_json() == _as_orjson_wrote_it(event)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"event_id": "x"}', "invalid_schema"),
        (orjson.dumps({**POST, "schema_version": "2.0"}), "unsupported_schema_version"),
        (orjson.dumps({**POST, "text": None}), "invalid_schema"),
    ],
)
def test_rejections_carry_a_stable_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        Post.from_json(raw)
    assert info.value.reason == reason


def test_rejection_detail_never_contains_the_payload() -> None:
    secret = "alice@example.com"
    doc = {**POST, "text": {"nested": secret}, "tenant": secret}
    with pytest.raises(ContractError) as info:
        Post.from_json(orjson.dumps(doc))
    assert secret not in str(info.value)
    assert "text" in info.value.detail


# --- what a string may contain ----------------------------------------------------------------
# Forbidden in every string field: C0 controls, DEL, C1 controls, lone surrogates; free text
# (text, prompt, reasons, summary, detail) may hold tab, LF and CR.
CONTROLS = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))]
FREE_TEXT_WHITESPACE = {"\t", "\n", "\r"}
FREE_TEXT_FIELDS = {"text", "prompt", "prompt_prefix", "reason", "detail", "summary"}
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
AROUND_TEXT = st.text(max_size=5)


def string_slots(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths to every string in `doc` (list items and mapping values included) the character
    rule covers: enum and hash fields are excluded (their own patterns reject more)."""
    closed = {"schema_version", "tenant", "content_key", "matched_content_key", "near_scope"}
    closed |= {"payload_sha256", "payload_b64", "key_b64", "kind", "verdict", "action"}
    closed |= {"source", "outcome", "stage", "event", "severity", "model_verdict"}
    closed |= {"serving_verdict", "candidate_verdict", "produced_at", "created_at"}
    closed |= {"decided_at", "received_at", "reviewed_at", "at", "deadline", "raised_at"}
    closed |= {"serving_decided_at", "candidate_decided_at"}
    slots: list[tuple[str, ...]] = []
    for key, value in doc.items():
        if key in closed or (key == "reason" and doc is DLQ):
            continue
        if isinstance(value, str):
            slots.append((key,))
        elif isinstance(value, list):
            slots += [(key, str(i)) for i, item in enumerate(value) if isinstance(item, str)]
        elif isinstance(value, dict):
            slots += [(key, *path) for path in string_slots(value)]
    return slots


def replaced(doc: dict[str, Any], path: tuple[str, ...], value: str) -> dict[str, Any]:
    head, *rest = path
    current = doc[head]
    if not rest:
        new: Any = value
    elif isinstance(current, list):
        new = [value if str(i) == rest[0] else item for i, item in enumerate(current)]
    else:
        new = replaced(current, tuple(rest), value)
    return {**doc, head: new}


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_a_forbidden_character_in_any_string_field_is_a_contract_error(data: st.DataObject) -> None:
    model, schema, base = data.draw(st.sampled_from(CASES), label="event")
    path = data.draw(st.sampled_from(string_slots(base)), label="field")
    free = path[0] in FREE_TEXT_FIELDS
    bad = data.draw(
        st.sampled_from([c for c in CONTROLS if not (free and c in FREE_TEXT_WHITESPACE)])
        | SURROGATES,
        label="character",
    )
    around = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=8)
    value = data.draw(around) + bad + data.draw(around)
    doc = replaced(base, path, value)
    # json.dumps escapes a lone surrogate as `\udXXX`, as a hostile producer would write it.
    raw = json.dumps(doc).encode()
    with pytest.raises(ContractError) as info:
        model.from_json(raw)
    assert info.value.reason in {"forbidden_character", "invalid_schema"}
    if len(value) <= 40 or path[0] in FREE_TEXT_FIELDS:
        assert info.value.reason == "forbidden_character", info.value.detail
    assert value not in info.value.detail
    assert not schema_accepts(schema, json.loads(raw))


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_accepted_string_round_trips_and_agrees_with_the_schema(data: st.DataObject) -> None:
    model, schema, base = data.draw(st.sampled_from(CASES), label="event")
    path = data.draw(st.sampled_from(string_slots(base)), label="field")
    value = data.draw(st.text(max_size=60), label="value")
    doc = replaced(base, path, value)
    raw = json.dumps(doc).encode()
    try:
        event = model.from_json(raw)
    except ContractError as exc:
        assert exc.reason in {"forbidden_character", "invalid_schema", "invalid_json"}
        assert not schema_accepts(schema, json.loads(raw))
        return
    assert schema_accepts(schema, json.loads(raw))
    assert model.from_json(event.to_json()) == event
    assert schema_accepts(schema, orjson.loads(event.to_json()))


@pytest.mark.parametrize("field", ["text", "prompt", "author_id", "post_id", "lang"])
def test_nul_in_a_post_is_forbidden_character(field: str) -> None:
    doc = {**POST, "kind": "response", "prompt": "q", field: "a\x00b"}
    with pytest.raises(ContractError) as info:
        Post.from_json(orjson.dumps(doc))
    assert info.value.reason == "forbidden_character"
    assert info.value.detail.startswith(field)


def test_tab_and_newlines_are_free_text_but_not_ids() -> None:
    assert Post.from_json(orjson.dumps({**POST, "text": "a\tb\r\nc"})).text == "a\tb\r\nc"
    with pytest.raises(ContractError):
        Post.from_json(orjson.dumps({**POST, "author_id": "a\tb"}))


@pytest.mark.parametrize("surrogate", [b"\\ud800", b"\\udfff", b"x\\udc00y", b"\\ud83d"])
def test_an_escaped_lone_surrogate_is_forbidden_character(surrogate: bytes) -> None:
    raw = orjson.dumps({**POST, "text": "@"}).replace(b'"@"', b'"' + surrogate + b'"')
    with pytest.raises(ContractError) as info:
        Post.from_json(raw)
    assert info.value.reason == "forbidden_character"


def test_a_pair_of_escaped_surrogates_is_one_character() -> None:
    raw = orjson.dumps({**POST, "text": "@"}).replace(b'"@"', b'"\\ud83d\\ude00"')
    assert Post.from_json(raw).text == "\U0001f600"


@given(
    text=st.text(min_size=1, max_size=30),
    prompt=st.none() | st.text(max_size=30),
    limit=st.integers(1, 30),
)
def test_the_text_limit_counts_text_and_prompt(text: str, prompt: str | None, limit: int) -> None:
    post = Post.model_construct(**{**POST, "text": text, "prompt": prompt})
    longest = max(len(text), len(prompt or ""))
    if longest <= limit:
        assert within_text_limit(post, limit) is post
    else:
        with pytest.raises(ContractError) as info:
            within_text_limit(post, limit)
        assert info.value.reason == "text_too_long"


@given(
    value=st.text(max_size=20)
    | st.tuples(AROUND_TEXT, st.sampled_from(CONTROLS), AROUND_TEXT).map("".join)
)
def test_the_early_character_check_is_the_contract_s(value: str) -> None:
    for free_text, field in ((False, Line), (True, FreeText)):
        try:
            TypeAdapter(field).validate_python(value)
        except ValidationError:
            accepted = False
        else:
            accepted = True
        assert allowed_characters(value, free_text=free_text) is accepted


def test_a_reviewer_s_reason_or_category_with_a_control_character_is_a_submission_error() -> None:
    def submit(reason: str, categories: tuple[str, ...] | None) -> Submission:
        form = SubmissionForm(
            outcome=ReviewOutcome.CORRECT,
            verdict=Verdict.UNSAFE,
            reason=reason,
            tags=("t",),
            categories=categories,
        )
        return validate_submission(
            form, model_verdict=Verdict.SAFE, model_categories=(), allowed_tags=["t"]
        )

    with pytest.raises(InvalidSubmission) as info:
        submit("bad\x00reason", None)
    assert info.value.field == "reason"
    with pytest.raises(InvalidSubmission) as info:
        submit("ok", ("Vio\x85lent",))
    assert info.value.field == "categories"
    assert submit("line one\nline two", None).reason
