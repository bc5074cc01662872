"""Training and evaluation examples carry placeholders as the sample's pack says, whatever the
archive holds (issue 23)."""

from __future__ import annotations

import pytest

from guardstream.contracts.events import Kind
from guardstream.contracts.redaction import PiiKind
from guardstream.feedback.dataset import example
from guardstream.feedback.job import for_training
from guardstream.policy.pack import Redaction
from tests.unit.feedback.test_feedback import sample

pytestmark = pytest.mark.unit

RAW = "打给 13800138000 或写信 li.si@example.org"


def test_a_raw_archive_sample_is_redacted_for_training_by_default() -> None:
    raw = sample(1, text=RAW, kind=Kind.RESPONSE, prompt="mail me: a@b.com", pred_refusal=True)
    # No entry for the pack (an unknown or removed pack): the default, redacted.
    trained = for_training(raw, {})
    assert trained.text == "打给 [PHONE] 或写信 [EMAIL]"
    assert trained.prompt == "mail me: [EMAIL]"
    assert "13800138000" not in str(example(trained).messages)


def test_the_samples_pack_decides() -> None:
    raw = sample(1, text=RAW, policy="acme@3")
    assert for_training(raw, {"acme": Redaction(training=False)}) == raw
    phones = for_training(raw, {"acme": Redaction(kinds=(PiiKind.PHONE,))})
    assert phones.text == "打给 [PHONE] 或写信 li.si@example.org"
    # Another pack's setting does not apply.
    assert for_training(raw, {"other": Redaction(training=False)}).text != RAW
