"""What `guardstream tail` makes of a record: the post and tenant a DLQ record is about (from
its payload when kept whole, else from the key of a topic keyed by post_id, never from a
content key), the filters (a record without the field does not match a filter that is set),
and records that are no valid event (shown with the reason, whatever the bytes)."""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from guardstream.cli.tail import Filters, Stream, as_json, as_text, read
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.runtime.kafka import dlq_record

pytestmark = pytest.mark.unit

NAMES = TopicNames("ns")
CATALOGUE = {NAMES[t]: t for t in Topic}


def dead(topic: Topic, key: bytes, payload: bytes, max_payload: int = 1 << 20) -> bytes:
    record = ConsumerRecord(NAMES[topic], 0, 3, 0, 0, key, payload, None, 0, 0, [])
    return dlq_record(
        record, consumer="c", reason="empty_text", detail="d", attempts=1, max_payload=max_payload
    ).to_json()


def seen_dlq(raw: bytes, key: bytes | None) -> tuple[str | None, str | None]:
    seen = read(Stream.DLQ, NAMES[Topic.DLQ], 0, 1, 0, key, raw, CATALOGUE)
    assert seen.error is None
    return seen.post_id, seen.tenant


def test_a_dlq_record_names_its_post_from_the_payload_or_a_post_keyed_origin() -> None:
    post = new_post("text", tenant="acme", post_id="p-1")
    whole = dead(Topic.POSTS, b"p-1", post.to_json())
    assert seen_dlq(whole, b"p-1") == ("p-1", "acme")
    cut = dead(Topic.POSTS, b"p-1", post.to_json(), max_payload=10)
    assert seen_dlq(cut, b"p-1") == ("p-1", None)  # tenant unknown: the payload was cut
    # A score request is keyed by content: its key is no post id.
    request_cut = dead(Topic.SCORE_REQUESTS, b"0" * 32, b'{"post_id": "p-2"}', max_payload=5)
    assert seen_dlq(request_cut, b"0" * 32) == (None, None)
    request_whole = dead(Topic.SCORE_REQUESTS, b"0" * 32, b'{"post_id": "p-2", "tenant": 7}')
    assert seen_dlq(request_whole, b"0" * 32) == ("p-2", None)  # a tenant that is no string


def test_a_filter_that_is_set_needs_the_field() -> None:
    post = new_post("text", tenant="acme", post_id="p-1")
    seen = read(
        Stream.DLQ, "t", 0, 1, 0, None, dead(Topic.POSTS, b"p-1", post.to_json()), CATALOGUE
    )
    assert Filters().match(seen)
    assert Filters(post_ids=frozenset({"p-1"}), tenants=frozenset({"acme"})).match(seen)
    assert not Filters(tenants=frozenset({"beta"})).match(seen)
    assert not Filters(verdicts=frozenset({"safe"})).match(seen)  # a DLQ record has none


@given(
    stream=st.sampled_from(list(Stream)),
    key=st.none() | st.binary(max_size=20),
    value=st.none() | st.binary(max_size=200),
)
def test_any_bytes_are_shown_never_raised(
    stream: Stream, key: bytes | None, value: bytes | None
) -> None:
    seen = read(stream, "t", 0, 1, 0, key, value, CATALOGUE)
    assert (seen.event is None) == (seen.error is not None)
    assert as_text(seen).plain
    row = as_json(seen)
    assert ("error" in row) == (seen.event is None)
