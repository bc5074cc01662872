"""`contracts.ids.stable_id`: every kind of id keeps the value its former recipe gave, so events
made again after an upgrade deduplicate against those made before it."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts import ids
from guardstream.contracts.events import AssignmentEvent, ReviewStage
from guardstream.contracts.ids import Digest, stable_id
from guardstream.review.logic import assignment_event_id, human_decision_id, review_id, task_id
from guardstream.verdict.decisions import decision_id

pytestmark = pytest.mark.unit

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CK = "ab" * 16

# Computed by the recipes each module spelled out before `stable_id` (commit c72feaa).
PINNED = [
    (decision_id("acme", "e-1", "default@1", CK), "3aa48784f72cbfed0d4aadb2b6fab04f"),
    (decision_id("acme", "帖子-1", "default@1", CK), "203d1d76f751ecd6442917c902395f68"),
    (task_id("acme", "p-1", "default@1"), "eeffa6fb48511d538e61a0f1934d9f88"),
    (review_id("t1", ReviewStage.FIRST, "alice"), "417afbc22297131e6d0a8b74a3d32620"),
    (review_id("t1", ReviewStage.QA, "bob"), "42c6ac0d3707129c257b6cebd259e6da"),
    (human_decision_id("t1"), "cc3f52f581ddb5182ada415d197aec0b"),
    (
        assignment_event_id("t1", AssignmentEvent.ASSIGNED, "alice", AT),
        "c221e6cf0810a45a9ac636b3f199fe5d",
    ),
    (
        assignment_event_id("t1", AssignmentEvent.ASSIGNED, None, AT),
        "62455e84882c8a2b5283c2679cff543d",
    ),
    (
        stable_id(ids.SLA_OUTPUT, "sla-event:expired", "p-1", "d-1"),
        "f30d2382-0d94-554f-96ae-0b0382ebe29b",
    ),
    (
        stable_id(ids.SLA_DOWNGRADE, "d-1", "p-1", "sla_timeout"),
        "531cef07912b24a7fdb2567f2a586ba7",
    ),
    (
        stable_id(ids.DLQ_RECORD, "posts.v1", 3, 42, "triage", "invalid_json"),
        "a19a2b3f-7e2a-5641-a026-a692a76cfd2f",
    ),
    (
        stable_id(ids.REJECTION_ALERT, "output_rejected", "posts.v1", 3, 42, "triage"),
        "64d56425-981d-557e-94fa-06a3a51f3537",
    ),
    (stable_id(ids.QA_ALERT, "2025-03"), "3f1bdefa33d2864a2e6a59da"),
    (stable_id(ids.TRAINING_SET, "r-1", "r-2"), "93e1df5c"),
]


@pytest.mark.parametrize(("made", "before"), PINNED)
def test_every_kind_keeps_its_former_value(made: str, before: str) -> None:
    assert made == before


PART = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)


@given(st.lists(PART, min_size=1, max_size=5))
def test_the_default_recipe_is_blake2b_over_nul_terminated_parts(parts: list[str]) -> None:
    h = hashlib.blake2b(digest_size=16, person=b"guardstream-dec2")
    for part in parts:
        h.update(part.encode() + b"\x00")
    assert stable_id(ids.DECISION, *parts) == h.hexdigest()


@given(PART, PART, PART)
def test_the_uuid5_kinds_are_uuid5(kind: str, post: str, decision: str) -> None:
    namespace = uuid.UUID(bytes=ids.SLA_OUTPUT.namespace)
    expected = str(uuid.uuid5(namespace, f"{kind}\x00{post}\x00{decision}"))
    assert stable_id(ids.SLA_OUTPUT, kind, post, decision) == expected


@given(PART, st.integers(0, 2**31), st.integers(0, 2**62), PART, PART)
def test_the_dlq_id_is_the_url_uuid5_of_its_origin(
    topic: str, partition: int, offset: int, consumer: str, reason: str
) -> None:
    name = f"dlq:{topic}:{partition}:{offset}:{consumer}:{reason}"
    made = stable_id(ids.DLQ_RECORD, topic, partition, offset, consumer, reason)
    assert made == str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def test_kinds_never_share_a_recipe() -> None:
    kinds = [v for v in vars(ids).values() if isinstance(v, ids.IdKind)]
    assert len(kinds) == 11
    assert len(set(kinds)) == len(kinds)
    for kind in kinds:
        if kind.digest is Digest.BLAKE2B:
            assert 0 < len(kind.namespace) <= 16  # a person names the kind
        if kind.digest is Digest.UUID5:
            assert len(kind.namespace) == 16
