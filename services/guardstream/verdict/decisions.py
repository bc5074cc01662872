"""Turning a verdict into a decision: the policy pack's action, an honest reason, a stable id.

Triage (cache and near-duplicate hits) and the scorer (model verdicts) both build decisions
here, so a decision means the same thing whichever path produced it. The action comes from the
post's policy pack (`guardstream.policy.route`); the reason says what the model said and which
rule acted on it, nothing more. The id depends only on the tenant, the post event, the pack and
the content key: a decision re-made after a crash carries the same id, and another tenant's
post with the same event id and text gets another one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from guardstream.contracts import ids
from guardstream.contracts.events import (
    Action,
    AuthorHistory,
    Decision,
    LangSource,
    Source,
    Verdict,
    utcnow,
)
from guardstream.contracts.identity import PostIdentity
from guardstream.contracts.ids import stable_id
from guardstream.contracts.topics import Topic
from guardstream.policy import (
    ControversialMode,
    PolicyPack,
    Routed,
    route,
    route_scorer_unavailable,
)
from guardstream.verdict.cache import CachedVerdict

ACTION_TOPIC: dict[Action, Topic] = {
    Action.ALLOW: Topic.ALLOW,
    Action.BLOCK: Topic.BLOCK,
    Action.REVIEW: Topic.REVIEW,
    Action.LIMIT: Topic.LIMIT,
    Action.WARN: Topic.WARN,
    Action.REMOVE: Topic.REMOVE,
    # A held post waits for a person: the review queue and its SLA timer read REVIEW.
    Action.HOLD: Topic.REVIEW,
}


class Origin(enum.Enum):
    """Where the verdict behind a decision came from."""

    MODEL = "model"  # scored for this very content just now
    CACHE = "cache"  # identical content decided earlier
    NEAR = "near"  # a trivial variant of content decided earlier


def decision_id(tenant: str, post_event_id: str, policy: str, content_key: str) -> str:
    return stable_id(ids.DECISION, tenant, post_event_id, policy, content_key)


def model_reason(label: str | None, categories: Sequence[str], problem: str | None) -> str:
    """Say what the model said, nothing more: the reason must never be invented."""
    if label is None:
        return f"model output unusable ({problem})"
    cats = f" [{', '.join(categories)}]" if categories else ""
    return f"Qwen3Guard: {label}{cats}"


def human_action(pack: PolicyPack | None, verdict: Verdict) -> Action:
    """What a human verdict does. A human has looked, so it is never sent back to review:
    unsafe blocks, safe allows, controversial follows the pack's controversial mode with
    `review` (and an unknown pack) read as allow: a person saw it and did not call it unsafe."""
    if verdict is Verdict.UNSAFE:
        return Action.BLOCK
    if verdict is Verdict.CONTROVERSIAL and pack is not None:
        if pack.controversial is ControversialMode.STRICT:
            return Action.BLOCK
    return Action.ALLOW


def decide(
    entry: CachedVerdict,
    origin: Origin,
    pack: PolicyPack,
    *,
    post_id: str,
    post_event_id: str,
    tenant: str,
    content_key: str,
    matched_content_key: str | None = None,
    lang: str | None = None,
    lang_source: LangSource | None = None,
    history: AuthorHistory | None = None,
) -> Decision:
    """`history`: the post author's, read when the pack's rules use it (None: not read, or
    Redis did not answer); the decision records it when a rule could have read it."""
    if entry.source is Source.HUMAN:
        # A human verdict overrides the model's for this content (sticky), whatever the rules.
        action = human_action(pack, entry.verdict)
        routed = Routed(action, "human_verdict", f"{pack.ref} acts on the human verdict")
        history = None
    else:
        routed = route(pack, entry.verdict, entry.confidence, entry.categories, history)
    earlier = ""
    if origin is not Origin.MODEL:
        what = "identical content" if origin is Origin.CACHE else "near-duplicate of content"
        when = entry.decided_at.isoformat(timespec="seconds")
        earlier = f"{what} decided earlier ({entry.source.value}, {when}); "
    ident = decision_id(tenant, post_event_id, pack.ref, content_key)
    now = utcnow()
    return Decision.make(
        decision_id=ident,
        at=now,
        post_id=post_id,
        post_event_id=post_event_id,
        tenant=tenant,
        verdict=entry.verdict,
        action=routed.action,
        categories=entry.categories,
        confidence=entry.confidence,
        refusal=entry.refusal,
        input_truncated=entry.input_truncated,
        reason=f"{earlier}{entry.reason}. {routed.explanation}",
        rule=routed.rule,
        source=Source.MODEL if origin is Origin.MODEL else Source.CACHE,
        model=entry.model,
        adapter=entry.adapter,
        policy=pack.ref,
        content_key=content_key,
        matched_content_key=matched_content_key,
        decided_at=entry.decided_at if origin is Origin.MODEL else now,
        lang=lang,
        lang_source=lang_source,
        author_history=history if pack.uses_author_history else None,
        arm=pack.arm,
    )


def unscored(
    pack: PolicyPack,
    *,
    post_id: str,
    post_event_id: str,
    tenant: str,
    content_key: str,
    model: str,
    adapter: str | None,
    waited_s: float,
    lang: str | None = None,
    lang_source: LangSource | None = None,
) -> Decision:
    """The decision for a post the scorer could not judge in time, under a pack that says
    what to do then (`route_scorer_unavailable`). No model saw the post: the verdict is
    `controversial` (contested until a human decides), without confidence or categories, the
    source is `rule` and the reason says so. Same id as a model decision for the post would
    have: the journal keeps it the only one."""
    routed = route_scorer_unavailable(pack)
    reason = f"not scored: a score request has waited {waited_s:.0f} s unanswered. "
    return _unjudged(
        pack,
        routed.action,
        f"{reason}{routed.explanation}",
        routed.rule,
        PostIdentity(tenant, post_id, post_event_id, pack.ref, content_key),
        model=model,
        adapter=adapter,
        lang=lang,
        lang_source=lang_source,
    )


def past_deadline(
    pack: PolicyPack,
    *,
    post_id: str,
    post_event_id: str,
    tenant: str,
    content_key: str,
    model: str,
    adapter: str | None,
    deadline_s: float,
    lang: str | None = None,
    lang_source: LangSource | None = None,
) -> Decision:
    """The decision for an interactive post the model did not judge within its caller's
    deadline: `controversial`, sent to review whatever the pack's rules (never `safe`: an
    unjudged post is not known to be harmless), source `rule`. Same id as a model decision
    for the post would have: the journal keeps it the only one."""
    return _unjudged(
        pack,
        Action.REVIEW,
        f"not scored within the caller's deadline of {deadline_s:g} s: a person decides",
        "deadline",
        PostIdentity(tenant, post_id, post_event_id, pack.ref, content_key),
        model=model,
        adapter=adapter,
        lang=lang,
        lang_source=lang_source,
    )


def _unjudged(
    pack: PolicyPack,
    action: Action,
    reason: str,
    rule: str,
    post: PostIdentity,
    *,
    model: str,
    adapter: str | None,
    lang: str | None,
    lang_source: LangSource | None,
) -> Decision:
    """A decision no model made: `controversial`, source `rule`, no confidence or categories."""
    return Decision.make(
        decision_id=decision_id(post.tenant, post.post_event_id, pack.ref, post.content_key),
        at=utcnow(),
        post_id=post.post_id,
        post_event_id=post.post_event_id,
        tenant=post.tenant,
        verdict=Verdict.CONTROVERSIAL,
        action=action,
        reason=reason,
        rule=rule,
        source=Source.RULE,
        model=model,
        adapter=adapter,
        policy=pack.ref,
        content_key=post.content_key,
        lang=lang,
        lang_source=lang_source,
        arm=pack.arm,
    )
