"""A review as the feedback archive keeps it (`guardstream.contracts.feedback.FeedbackSample`):
the post brought back to what the model saw, beside what the model and the human said."""

from __future__ import annotations

from datetime import datetime

from guardstream.contracts.events import Kind, Review, clip, utcnow
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.text import normalise
from guardstream.policy.pack import PolicyPack
from guardstream.policy.prompt import apply_prefix, pack_categories


def from_review(
    review: Review,
    *,
    text: str,
    kind: Kind,
    prompt: str | None,
    lang: str | None,
    pred_categories: tuple[str, ...],
    pred_reason: str | None,
    pred_refusal: bool | None,
    decided_at: datetime | None,
    pack: PolicyPack | None,
    region: str | None = None,
    human_refusal: bool | None = None,
) -> FeedbackSample:
    """The archived form of one review. `text`/`prompt` are the post as received; they are
    brought to what the model saw (normalised, the pack's prefix for the post's `region` on
    the user turn, the pack's categories when they are its own)."""
    user_turn = prompt if kind is Kind.RESPONSE else text
    prefixed = (
        apply_prefix(pack, normalise(user_turn or ""), region)
        if pack
        else normalise(user_turn or "")
    )
    return FeedbackSample(
        event_id=review.review_id,
        produced_at=utcnow(),
        sample_id=review.review_id,
        post_id=review.post_id,
        tenant=review.tenant,
        lang=lang,
        kind=kind,
        text=normalise(text) if kind is Kind.RESPONSE else prefixed,
        prompt=prefixed if kind is Kind.RESPONSE else None,
        content_key=review.content_key,
        pred_verdict=review.model_verdict,
        pred_categories=pred_categories,
        pred_confidence=review.model_confidence,
        pred_reason=clip(FeedbackSample, "pred_reason", pred_reason) if pred_reason else None,
        pred_refusal=pred_refusal,
        human_verdict=review.verdict,
        human_categories=review.categories,
        human_reason=review.reason,
        human_refusal=human_refusal if kind is Kind.RESPONSE else None,
        tags=review.tags,
        reviewer=review.reviewer,
        stage=review.stage,
        policy=review.policy,
        model=review.model or "unknown",
        adapter=review.adapter,
        decided_at=decided_at,
        reviewed_at=review.reviewed_at,
        categories=pack_categories(pack) if pack else None,
    )
