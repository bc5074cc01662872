"""Turning a verdict into a decision: action, topic, reason and a deterministic id.

Both triage (cache hits) and the scorer (model verdicts) build decisions here, so a decision
means the same thing whichever path produced it. The id depends only on the post event, the
policy and the content key: a decision re-emitted after a crash carries the same id and is
recognisable as a replay downstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from guardstream.core.cache import CachedVerdict
from guardstream.core.contracts import TERMINAL, Action, Decision, Source, Verdict, utcnow
from guardstream.core.topics import Topic

ACTION_TOPIC: dict[Action, Topic] = {
    Action.ALLOW: Topic.ALLOW,
    Action.BLOCK: Topic.BLOCK,
    Action.REVIEW: Topic.REVIEW,
}
_REASON_MAX = 500


def decision_id(post_event_id: str, policy: str, content_key: str) -> str:
    h = hashlib.blake2b(digest_size=16, person=b"guardstream-dec1")
    for part in (post_event_id, policy, content_key):
        h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def model_reason(label: str | None, categories: Sequence[str], problem: str | None) -> str:
    """Say what the model said, nothing more: the reason must never be invented."""
    if label is None:
        return f"model output unusable ({problem}); sent to human review"
    cats = f" [{', '.join(categories)}]" if categories else ""
    return f"Qwen3Guard: {label}{cats}"


def cache_reason(entry: CachedVerdict) -> str:
    when = entry.decided_at.isoformat(timespec="seconds")
    return f"identical content decided earlier ({entry.source.value}, {when}): {entry.reason}"


def build_decision(
    *,
    post_id: str,
    post_event_id: str,
    tenant: str,
    policy: str,
    content_key: str,
    verdict: Verdict,
    categories: Sequence[str],
    confidence: float | None,
    refusal: bool | None,
    reason: str,
    source: Source,
    model: str,
    adapter: str | None,
    decided_at: datetime | None = None,
) -> Decision:
    ident = decision_id(post_event_id, policy, content_key)
    return Decision(
        event_id=ident,
        produced_at=utcnow(),
        decision_id=ident,
        post_id=post_id,
        post_event_id=post_event_id,
        tenant=tenant,
        verdict=verdict,
        action=TERMINAL[verdict],
        categories=tuple(categories),
        confidence=confidence,
        refusal=refusal,
        reason=reason[:_REASON_MAX],
        source=source,
        model=model,
        adapter=adapter,
        policy=policy,
        content_key=content_key,
        decided_at=decided_at or utcnow(),
    )


def decide(
    entry: CachedVerdict,
    *,
    fresh: bool,
    post_id: str,
    post_event_id: str,
    tenant: str,
    policy: str,
    content_key: str,
) -> Decision:
    """The decision for one post from a verdict: `fresh` when the model just gave it, else it
    came from the cache (an earlier identical post) and says so."""
    return build_decision(
        post_id=post_id,
        post_event_id=post_event_id,
        tenant=tenant,
        policy=policy,
        content_key=content_key,
        verdict=entry.verdict,
        categories=entry.categories,
        confidence=entry.confidence,
        refusal=entry.refusal,
        reason=entry.reason if fresh else cache_reason(entry),
        source=Source.MODEL if fresh else Source.CACHE,
        model=entry.model,
        adapter=entry.adapter,
        decided_at=entry.decided_at if fresh else None,
    )
