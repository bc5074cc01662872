"""The review console's events continue the trace of the contested decision their task came
from: the Review, the human Decision and the assignment carry its trace id (the console's
relay sends them long after, from the outbox)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.review.logic import task_id
from guardstream.runtime.kafka import client_kwargs, make_producer
from guardstream.runtime.settings import Settings
from guardstream.runtime.tracing import trace_id_of
from tests.integration.review.conftest import Console, contested, new_test_post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def headers_of(
    settings: Settings, topic: Topic, post_id: str, within: float = 30
) -> list[tuple[str, bytes]]:
    """The headers of the first record about `post_id` on `topic`."""
    name = TopicNames(settings.namespace)[topic]
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.key == post_id.encode():
                        return list(record.headers)
        raise AssertionError(f"no record about {post_id} on {name}")
    finally:
        await consumer.stop()


async def test_review_events_carry_the_trace_of_the_contested_decision(console: Console) -> None:
    settings = console.settings
    post = new_test_post()
    decision = contested(post)
    trace_id = uuid.uuid4().hex
    sent = [("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01".encode())]
    untraced = new_test_post()
    untraced_decision = contested(untraced)
    producer = make_producer(settings, client_id="test")
    await producer.start()
    try:
        names = TopicNames(settings.namespace)
        await producer.send_and_wait(names[Topic.POSTS], post.to_json(), key=post.post_id.encode())
        await producer.send_and_wait(
            names[Topic.REVIEW], decision.to_json(), key=post.post_id.encode(), headers=sent
        )
        await producer.send_and_wait(
            names[Topic.REVIEW], untraced_decision.to_json(), key=untraced.post_id.encode()
        )
    finally:
        await producer.stop()
    await console.wait_tasks(2)
    [row] = await console.sql("SELECT traceparent FROM tasks WHERE post_id = $1", post.post_id)
    assert trace_id_of([("traceparent", row["traceparent"].encode())]) == trace_id

    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        for pid in (post.post_id, untraced.post_id):
            response = await http.post(
                f"/api/v1/tasks/{task_id(decision.tenant, pid, decision.policy)}/decision",
                json={
                    "outcome": "correct",
                    "verdict": "safe",
                    "reason": "讽刺",
                    "tags": ["政治隐喻"],
                },
            )
            assert response.status_code == 200, response.text

    review = await headers_of(settings, Topic.REVIEWS, post.post_id)
    human = await headers_of(settings, Topic.ALLOW, post.post_id)
    assert trace_id_of(review) == trace_id_of(human) == trace_id
    # A task from an untraced decision sends its events without a made-up trace.
    assert trace_id_of(await headers_of(settings, Topic.REVIEWS, untraced.post_id)) is None
