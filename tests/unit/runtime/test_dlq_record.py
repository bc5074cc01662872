"""A DLQ record keeps a bounded, optionally redacted payload and the digest of the whole
(issue 23)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from aiokafka import ConsumerRecord
from hypothesis import example, given
from hypothesis import strategies as st

from guardstream.runtime.kafka import dlq_record

pytestmark = pytest.mark.unit


def record(value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t", partition=0, offset=3, timestamp=0, timestamp_type=0, key=None, value=value,
        checksum=None, serialized_key_size=0, serialized_value_size=len(value or b""), headers=[],
    )  # fmt: skip


payloads = st.binary(max_size=3000) | st.text(max_size=500).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)


@given(payloads, st.integers(min_value=0, max_value=4000), st.booleans())
@example(b"mail a@b.com \xff\xfe card 4111 1111 1111 1111", 4000, True)
@example(b"13800138000 " * 100, 50, True)
@example(b"", 10, True)
def test_bounded_with_the_digest_of_the_whole(value: bytes, cap: int, redacted: bool) -> None:
    dead = dlq_record(
        record(value), consumer="c", reason="invalid_json", detail="d", attempts=1,
        max_payload=cap, redacted=redacted,
    )  # fmt: skip
    kept = base64.b64decode(dead.payload_b64)
    assert len(kept) <= cap
    assert dead.payload_size == len(value)
    assert dead.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert dead.payload_truncated == (cap < len(value))
    assert dead.payload_redacted == (redacted and cap > 0 and len(value) > 0)
    if not redacted:
        assert kept == value[:cap]


def test_redaction_keeps_what_is_not_utf8_and_replaces_personal_data() -> None:
    value = b"mail a@b.com \xff\xfe card 4111 1111 1111 1111"
    dead = dlq_record(
        record(value), consumer="c", reason="r", detail="d", attempts=1, max_payload=1000,
        redacted=True,
    )  # fmt: skip
    assert base64.b64decode(dead.payload_b64) == b"mail [EMAIL] \xff\xfe card [CARD]"
    assert not dead.payload_truncated and dead.payload_redacted
