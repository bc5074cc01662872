"""One archived human review (`schemas/feedback-sample.v1.json`): everything needed to train on
it and to explain later where it came from.

`text` (and `prompt` for response moderation) is what the model saw: the normalised post with
the policy pack's prefix applied, so training input and serving input are the same string.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StrictBool

from guardstream.contracts.events import (
    REVIEW_REASON_MAX,
    Confidence,
    ContentKey,
    Envelope,
    Id,
    Kind,
    Review,
    ReviewStage,
    Tenant,
    Timestamp,
    Verdict,
    clip,
    utcnow,
)
from guardstream.contracts.text import normalise
from guardstream.policy.pack import PolicyPack
from guardstream.policy.prompt import apply_prefix


class FeedbackSample(Envelope):
    sample_id: Id  # the review's id: one sample per review
    post_id: Id
    tenant: Tenant
    lang: Annotated[str, Field(max_length=35)] | None = None
    kind: Kind = Kind.PROMPT
    text: Annotated[str, Field(min_length=1)]
    prompt: str | None = None
    content_key: ContentKey
    pred_verdict: Verdict
    pred_categories: tuple[str, ...] = ()
    pred_confidence: Confidence | None = None
    pred_reason: Annotated[str, Field(max_length=500)] | None = None
    pred_refusal: StrictBool | None = None
    human_verdict: Verdict
    human_categories: tuple[str, ...] = ()
    human_reason: Annotated[str, Field(max_length=REVIEW_REASON_MAX)] | None = None
    # Response moderation: did the assistant refuse? The reviewer's label when they gave one.
    human_refusal: StrictBool | None = None
    tags: tuple[str, ...] = ()
    reviewer: Id
    stage: ReviewStage = ReviewStage.FIRST
    policy: Id
    model: Id
    adapter: Id | None = None
    decided_at: Timestamp | None = None
    reviewed_at: Timestamp

    @property
    def disagrees(self) -> bool:
        return self.human_verdict is not self.pred_verdict

    @property
    def refusal_corrected(self) -> bool:
        """The reviewer gave a refusal label the model did not (a different one, or none)."""
        return self.human_refusal is not None and self.human_refusal is not self.pred_refusal


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
    human_refusal: bool | None = None,
) -> FeedbackSample:
    """The archived form of one review. `text`/`prompt` are the post as received; they are
    brought to what the model saw (normalised, the pack's prefix on the user turn)."""
    user_turn = prompt if kind is Kind.RESPONSE else text
    prefixed = (
        apply_prefix(pack, normalise(user_turn or "")) if pack else normalise(user_turn or "")
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
    )
