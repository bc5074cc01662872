"""`isolating_rejections`: a batch with an output refused for good is halved until the input it
came from stands alone; that input (only) is dead-lettered with an alert, every other input is
handled exactly once, and transient errors pass through untouched for the loop to retry."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError
from hypothesis import given, settings
from hypothesis import strategies as st

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import Alert, DlqRecord
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import OutputRejected
from guardstream.runtime.loop import Records
from guardstream.runtime.rejections import OUTPUT_REJECTED, isolating_rejections
from guardstream.runtime.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings(_env_file=None, namespace="unit")  # type: ignore[call-arg]
NAMES = TopicNames("unit")


def record(offset: int, size: int = 10) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "posts", 0, offset, 0, 0, f"post-{offset}".encode(), b"x" * size, None, 6, size, ()
    )


class Producer:
    """Records what is sent; refuses DLQ records with a payload when `refuse_payload`."""

    def __init__(self, refuse_payload: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self._refuse_payload = refuse_payload

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        if self._refuse_payload and topic == NAMES[Topic.DLQ]:
            if DlqRecord.from_json(value).payload_b64:
                raise MessageSizeTooLargeError("too large for the broker")
        self.sent.append((topic, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def of(self, topic: Topic) -> list[bytes]:
        return [value for name, value in self.sent if name == NAMES[topic]]


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(1, 40),
    bad=st.sets(st.integers(0, 39), max_size=4),
    raised=st.sampled_from(["rejected", "authorization"]),
)
def test_only_the_inputs_whose_outputs_were_refused_are_dead_lettered(
    size: int, bad: set[int], raised: str
) -> None:
    bad = {b for b in bad if b < size}
    handled: list[int] = []

    async def handler(records: Records) -> None:
        if any(r.offset in bad for r in records):
            if raised == "rejected":
                raise OutputRejected(MessageSizeTooLargeError())
            raise TopicAuthorizationFailedError()  # while queueing, before any flush
        handled.extend(r.offset for r in records)

    producer = Producer()
    handle = isolating_rejections(handler, producer, SETTINGS, "triage")  # type: ignore[arg-type]
    asyncio.run(handle([record(n) for n in range(size)]))

    assert sorted(handled) == [n for n in range(size) if n not in bad]  # each exactly once
    dead = [DlqRecord.from_json(v) for v in producer.of(Topic.DLQ)]
    assert sorted(d.origin.offset for d in dead) == sorted(bad)
    assert {d.reason for d in dead} <= {OUTPUT_REJECTED}
    assert all(
        base64.b64decode(d.origin.key_b64 or "") == f"post-{d.origin.offset}".encode() for d in dead
    )
    alerts = [Alert.from_json(v) for v in producer.of(Topic.ALERTS)]
    assert sorted(int(a.labels["origin_offset"]) for a in alerts) == sorted(bad)
    assert {a.kind for a in alerts} <= {OUTPUT_REJECTED}


def test_a_dlq_record_refused_too_goes_again_without_its_payload() -> None:
    async def handler(records: Records) -> None:
        raise OutputRejected(MessageSizeTooLargeError())

    producer = Producer(refuse_payload=True)
    handle = isolating_rejections(handler, producer, SETTINGS, "triage")  # type: ignore[arg-type]
    asyncio.run(handle([record(7, size=5000)]))
    (raw,) = producer.of(Topic.DLQ)
    dead = DlqRecord.from_json(raw)
    assert dead.payload_b64 == "" and dead.payload_size == 5000 and dead.payload_truncated


def test_transient_errors_pass_through_for_the_loop_to_retry() -> None:
    async def handler(records: Records) -> None:
        raise TransientError("broker down")

    producer = Producer()
    handle = isolating_rejections(handler, producer, SETTINGS, "triage")  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        asyncio.run(handle([record(n) for n in range(4)]))
    assert producer.sent == []
