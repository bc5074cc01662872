"""One archived human review (`schemas/feedback-sample.v1.json`): everything needed to train on
it and to explain later where it came from.

`text` (and `prompt` for response moderation) is what the model saw: the normalised post with
the policy pack's prefix applied, so training input and serving input are the same string.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from guardstream.contracts.categories import CategoryDef
from guardstream.contracts.events import (
    REVIEW_REASON_MAX,
    Confidence,
    ContentKey,
    Envelope,
    Id,
    Kind,
    ReviewStage,
    Tenant,
    Timestamp,
    Verdict,
)


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
    # The pack's categories when not Qwen3Guard's nine: training renders the prompt the served
    # model sees with them (added later; absent: the nine).
    categories: Annotated[tuple[CategoryDef, ...], Field(min_length=1, max_length=32)] | None = None

    @property
    def disagrees(self) -> bool:
        return self.human_verdict is not self.pred_verdict

    @property
    def refusal_corrected(self) -> bool:
        """The reviewer gave a refusal label the model did not (a different one, or none)."""
        return self.human_refusal is not None and self.human_refusal is not self.pred_refusal
