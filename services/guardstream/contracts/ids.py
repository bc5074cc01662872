"""Stable ids: every id guardstream derives from what it names, made by `stable_id` from one of
the kinds below.

An id is a pure function of its kind and parts, so an event made again after a crash, a replay
or an upgrade carries the id it had the first time: the decision journal, the review store and
every downstream consumer deduplicate on them. That is why each kind keeps the recipe its
values were first made with (hash, namespace, framing, size) and why none may ever change: a
new recipe would make every replayed event look new. A new kind takes the default recipe,
`IdKind(Digest.BLAKE2B, b"<its name>")`: BLAKE2b-128 personalised with the kind's name, every
part NUL-terminated. The parts are contract ids and lines, which hold no NUL, so the framing is
unambiguous; the older kinds joined by `:` rely on their parts (topics, consumer groups,
reason codes, QA periods) holding no `:` either.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from typing import Final


class Digest(enum.Enum):
    BLAKE2B = "blake2b"  # hex of `size` bytes, personalised with `namespace` (≤ 16 bytes)
    UUID5 = "uuid5"  # RFC 4122 name-based UUID (SHA-1) in the UUID whose bytes are `namespace`
    SHA256 = "sha256"  # hex of the first `size` bytes of SHA-256 over the parts


@dataclass(frozen=True, slots=True)
class IdKind:
    """One kind of id and the exact recipe of its values. `first`: a leading part naming the
    kind where its namespace is shared with another. `sep`: None, every part NUL-terminated
    (the default recipe); else the parts joined by it."""

    digest: Digest
    namespace: bytes = b""
    first: str | None = None
    sep: str | None = None
    size: int = 16


# Decisions of the triage/scorer path: (tenant, post event id, policy ref, content key).
DECISION: Final = IdKind(Digest.BLAKE2B, b"guardstream-dec2")
# Review: a task per (tenant, post id, policy); a review per (task, stage, QA reviewer or "");
# the human decision per task; an assignment event per (task, event, reviewer, at).
REVIEW_TASK: Final = IdKind(Digest.BLAKE2B, b"gs-review-task2")
REVIEW: Final = IdKind(Digest.BLAKE2B, b"gs-review-rev1")
HUMAN_DECISION: Final = IdKind(Digest.BLAKE2B, b"gs-review-dec1")
ASSIGNMENT_EVENT: Final = IdKind(Digest.BLAKE2B, b"gs-review-asg1")
# The SLA: the downgrade decision per (decision under review, post id, "sla_timeout") and every
# other output per (effect, post id, decision under review).
SLA_DOWNGRADE: Final = IdKind(Digest.BLAKE2B, b"guardstream-sla1", sep="\x00")
SLA_OUTPUT: Final = IdKind(
    Digest.UUID5, uuid.UUID("5b0c2f4e-7a51-4c5e-9d0e-6a3c1f7e2b90").bytes, sep="\x00"
)
# A dead-lettered record per (topic, partition, offset, consumer, reason); the alert of an
# output refused for good per (reason, topic, partition, offset, consumer).
DLQ_RECORD: Final = IdKind(Digest.UUID5, uuid.NAMESPACE_URL.bytes, first="dlq", sep=":")
REJECTION_ALERT: Final = IdKind(Digest.UUID5, uuid.NAMESPACE_URL.bytes, first="alert", sep=":")
# The QA agreement alert per period.
QA_ALERT: Final = IdKind(Digest.SHA256, first="qa_agreement_low", sep=":", size=12)
# A trained adapter's version: the sorted sample ids it was trained on.
TRAINING_SET: Final = IdKind(Digest.SHA256, sep="\n", size=4)


def stable_id(kind: IdKind, *parts: str | int) -> str:
    """The id of `kind` for `parts` (ints as their decimal digits)."""
    if kind.first is not None:
        parts = (kind.first, *parts)
    text = (
        "\x00".join(map(str, parts)) + "\x00"
        if kind.sep is None
        else kind.sep.join(map(str, parts))
    )
    data = text.encode("utf-8", "surrogatepass")
    if kind.digest is Digest.BLAKE2B:
        return hashlib.blake2b(data, digest_size=kind.size, person=kind.namespace).hexdigest()
    if kind.digest is Digest.UUID5:
        # uuid.uuid5 itself, written out: it takes a str name and refuses lone surrogates.
        sha1 = hashlib.sha1(kind.namespace + data, usedforsecurity=False).digest()
        return str(uuid.UUID(bytes=sha1[:16], version=5))
    return hashlib.sha256(kind.namespace + data).hexdigest()[: 2 * kind.size]


def review_task_id(tenant: str, post_id: str, policy: str) -> str:
    """The review task of a contested post: one per post and policy of a tenant, so a replayed
    decision maps to the same task and another tenant's post with the same post_id gets a
    task of its own. Made here, below both, for the review queue (which creates the task) and
    the moderation API (whose answer for a contested post names it)."""
    return stable_id(REVIEW_TASK, tenant, post_id, policy)
