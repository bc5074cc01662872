"""The feedback sample, where review data leaves the review database, carries placeholders for
personal data as the pack's `redact` says (issue 23)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from guardstream.contracts.events import ReviewStage, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.redaction import PiiKind
from guardstream.policy import load_registry
from guardstream.policy.pack import PolicyPack, Redaction
from guardstream.review.logic import read_form, review_event, validate_submission
from guardstream.review.services.common import feedback_sample
from guardstream.review.store.posts import PostText
from tests.support.review import review_task
from tests.unit.review.test_review_logic import TAGS

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TEXT = "加我微信 13800138000, 或发邮件到 zhang.san@example.com, 卡号 4111 1111 1111 1111"
PROMPT = "My SSN is 123-45-6789, what now? See https://x.io/login?token=s3cret"


def sample(pack: PolicyPack) -> FeedbackSample:
    item = review_task(model_verdict=Verdict.SAFE, categories=(), confidence=0.7)
    form = read_form(outcome="correct", verdict="unsafe", reason="泄露隐私", tags=["政治隐喻"],
                     categories=["PII"])  # fmt: skip
    sub = validate_submission(
        form,
        model_verdict=item.model_verdict,
        model_categories=item.categories,
        allowed_tags=TAGS,
        is_response=True,
    )
    review = review_event(item, sub, stage=ReviewStage.FIRST, reviewer="alice", late=False, at=NOW)
    post = PostText("p1", "acme", "response", TEXT, PROMPT)
    return feedback_sample(item, review, post, pack, human_refusal=sub.refusal)


def test_by_default_the_archived_sample_carries_placeholders() -> None:
    pack = load_registry(None).for_post("acme", None)
    assert pack.redact == Redaction()  # the documented default: on, every kind
    archived = sample(pack)
    assert archived.text == "加我微信 [PHONE], 或发邮件到 [EMAIL], 卡号 [CARD]"
    assert archived.prompt == "My SSN is [ID], what now? See [URL]"


def test_a_pack_chooses_the_kinds_or_keeps_the_text() -> None:
    pack = load_registry(None).for_post("acme", None)
    only_email = pack.model_copy(update={"redact": Redaction(kinds=(PiiKind.EMAIL,))})
    assert sample(only_email).text == TEXT.replace("zhang.san@example.com", "[EMAIL]")
    off = pack.model_copy(update={"redact": Redaction(archive=False)})
    assert (sample(off).text, sample(off).prompt) == (TEXT, PROMPT)
