"""Produce errors carry their policy, against the real broker: an output refused for good (here
a score request larger than the producer's `max_request_size`, which aiokafka and a broker
both answer with MessageSizeTooLargeError) sends its INPUT to the DLQ with reason
`output_rejected` and raises an `output_rejected` alert; triage goes on with the next posts
and is still running. Transient failures stay retried (the loop's own tests).
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from guardstream.contracts.events import Alert, DlqRecord, ScoreRequest
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.adversarial import read_records
from guardstream.devtools.produce import new_post, send
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.rejections import OUTPUT_REJECTED
from guardstream.runtime.settings import Settings
from guardstream.triage import main as triage_main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LIMIT = 20_000  # bytes per record; real deployments allow at least 1 MiB


async def wait_for(
    settings: Settings, topic: Topic, done: object, timeout_s: float = 60
) -> list[bytes]:
    """Every record of `topic` once `done(records)` holds."""
    deadline = time.monotonic() + timeout_s
    name = TopicNames(settings.namespace)[topic]
    while True:
        records = await read_records(settings, [name])
        if done(records) or time.monotonic() > deadline:  # type: ignore[operator]
            return records
        await asyncio.sleep(0.5)


async def test_an_output_too_large_sends_its_input_to_the_dlq_with_an_alert(
    settings: Settings,
) -> None:
    # The producer (and the outbox) refuse records over LIMIT; the validator's 1 MiB floor is
    # stepped over on purpose with model_copy (`replace` would validate it).
    small = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_request_bytes": LIMIT})}
    )
    await ensure_topics(settings)
    huge_text = " ".join(f"word{i}" for i in range(4000))  # ~32 kB: its score request too
    posts = [
        new_post("first small post", post_id="ok-1"),
        new_post(huge_text, post_id="huge"),
        new_post("second small post", post_id="ok-2"),
    ]
    stop = asyncio.Event()
    triage = asyncio.create_task(triage_main.run(small, stop))
    try:
        await send(settings, posts)  # a producer without the small limit
        requests = await wait_for(
            settings,
            Topic.SCORE_REQUESTS,
            lambda rs: {ScoreRequest.from_json(r).post_id for r in rs} >= {"ok-1", "ok-2"},
        )
        dead = [DlqRecord.from_json(r) for r in await wait_for(settings, Topic.DLQ, bool)]
        alerts = [Alert.from_json(r) for r in await wait_for(settings, Topic.ALERTS, bool)]
        assert not triage.done(), "triage stopped"
    finally:
        stop.set()
        await asyncio.wait_for(triage, timeout=60)

    assert {ScoreRequest.from_json(r).post_id for r in requests} == {"ok-1", "ok-2"}
    (record,) = dead
    assert base64.b64decode(record.origin.key_b64 or "") == b"huge"
    assert record.reason == OUTPUT_REJECTED and "MessageSizeTooLargeError" in record.detail
    assert record.origin.topic == TopicNames(settings.namespace)[Topic.POSTS]
    assert record.payload_size > LIMIT  # the input itself, its size and digest kept
    (alert,) = alerts
    assert alert.kind == OUTPUT_REJECTED and alert.severity.value == "critical"
    assert alert.labels["origin_offset"] == str(record.origin.offset)
    assert alert.labels["error"] == "MessageSizeTooLargeError"
