"""`Decision.make`, the one maker of decisions: its own event, and explanations cut to the
limits the contract gives their fields (never to a number written beside it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

from guardstream.contracts.events import (
    Action,
    Alert,
    Decision,
    DlqRecord,
    FreeText,
    Source,
    Verdict,
    clip,
    max_length,
)
from guardstream.contracts.feedback import FeedbackSample
from guardstream.policy import load_registry
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide, decision_id

pytestmark = pytest.mark.unit

AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CK = "c" * 32
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


def fields(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        decision_id="d" * 32,
        at=AT,
        post_id="p-1",
        post_event_id="e-1",
        tenant="acme",
        verdict=Verdict.UNSAFE,
        action=Action.BLOCK,
        reason="Qwen3Guard: Unsafe",
        rule="verdict",
        source=Source.MODEL,
        model="m",
        adapter=None,
        policy="default@1",
        content_key="a" * 32,
    )
    base.update(kw)
    return base


def schema_max(schema: str, field: str) -> int:
    doc = json.loads((SCHEMAS / f"{schema}.v1.json").read_text())
    limit = doc["properties"][field]["maxLength"]
    assert isinstance(limit, int)
    return limit


def test_limits_are_the_contract_s_own() -> None:
    assert max_length(Decision, "reason") == schema_max("decision", "reason") == 500
    assert max_length(Decision, "rule") == schema_max("decision", "rule") == 120  # optional field
    assert max_length(Alert, "summary") == schema_max("alert", "summary")
    assert max_length(DlqRecord, "detail") == schema_max("dlq-record", "detail")
    pred_reason = max_length(FeedbackSample, "pred_reason")
    assert pred_reason == schema_max("feedback-sample", "pred_reason")
    with pytest.raises(TypeError, match="no max_length"):
        max_length(Decision, "verdict")


def test_reason_and_rule_are_cut_to_their_field_limits() -> None:
    made = Decision.make(**fields(reason="长" * 10_000, rule="r" * 1_000))
    assert made.reason == "长" * max_length(Decision, "reason")
    assert made.rule == "r" * max_length(Decision, "rule")
    exact = "x" * max_length(Decision, "reason")
    assert Decision.make(**fields(reason=exact)).reason == exact


def test_the_cut_follows_the_field_not_a_number() -> None:
    class Terse(Decision):
        reason: Annotated[FreeText, Field(min_length=1, max_length=40)]

    assert Terse.make(**fields(reason="y" * 100)).reason == "y" * 40
    assert clip(Terse, "reason", "short") == "short"


def test_a_decision_is_its_own_event_decided_when_made_unless_reused() -> None:
    made = Decision.make(**fields())
    assert made.event_id == made.decision_id == "d" * 32
    assert made.produced_at == made.decided_at == AT
    earlier = AT - timedelta(hours=1)
    assert Decision.make(**fields(decided_at=earlier)).decided_at == earlier


def test_a_model_decision_with_a_long_reason_is_cut_not_lost() -> None:
    pack = load_registry(None).default
    entry = CachedVerdict(
        verdict=Verdict.UNSAFE,
        categories=("Violent",),
        confidence=0.97,
        reason="Qwen3Guard: Unsafe " + "z" * 2_000,
        source=Source.MODEL,
        model="m",
        decided_at=AT,
    )
    made = decide(
        entry, Origin.MODEL, pack, post_id="p-1", post_event_id="e-1", tenant="acme", content_key=CK
    )
    assert len(made.reason) == max_length(Decision, "reason")
    assert made.reason.startswith("Qwen3Guard: Unsafe zzz")
    assert made.decision_id == decision_id("acme", "e-1", pack.ref, CK)
    assert made.decided_at == AT  # the model's own verdict: decided when it was scored


@pytest.mark.parametrize("origin", [Origin.MODEL, Origin.CACHE])
def test_a_decision_says_when_the_model_judged_a_shortened_text(origin: Origin) -> None:
    pack = load_registry(None).default
    entry = CachedVerdict(
        verdict=Verdict.CONTROVERSIAL,
        reason="Qwen3Guard: Controversial",
        source=Source.MODEL,
        model="m",
        decided_at=AT,
        input_truncated=True,
    )
    made = decide(
        entry, origin, pack, post_id="p-1", post_event_id="e-1", tenant="acme", content_key=CK
    )
    assert made.input_truncated is True  # a cache hit reuses the verdict on the same text
    assert json.loads(made.to_json())["input_truncated"] is True
    whole = decide(
        entry.model_copy(update={"input_truncated": False}),
        origin,
        pack,
        post_id="p-1",
        post_event_id="e-1",
        tenant="acme",
        content_key=CK,
    )
    assert whole.input_truncated is None
    assert b"input_truncated" not in whole.to_json()  # the wire form of every other decision
