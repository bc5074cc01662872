"""Send posts and wait for their decisions: the smallest possible client of guardstream.

The watcher is assigned every partition of the action topics (no consumer group, nothing
committed) and positioned at their ends *before* anything is sent, so it sees exactly the
decisions that follow.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from guardstream.contracts.events import Decision, Kind, Post, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime import tracing
from guardstream.runtime.kafka import client_kwargs, make_producer
from guardstream.runtime.settings import Settings

ACTION_TOPICS = (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)


def new_post(
    text: str,
    *,
    tenant: str = "default",
    kind: Kind = Kind.PROMPT,
    prompt: str | None = None,
    lang: str | None = None,
    post_id: str | None = None,
) -> Post:
    now = utcnow()
    return Post(
        event_id=str(uuid.uuid4()),
        produced_at=now,
        post_id=post_id or f"p-{uuid.uuid4().hex}",
        tenant=tenant,
        author_id=f"cli-{uuid.uuid4().hex[:12]}",
        text=text,
        kind=kind,
        prompt=prompt,
        lang=lang,
        created_at=now,
    )


def sample_posts(tenant: str = "default") -> list[Post]:
    """The seeds' examples (Chinese and English) plus a response-moderation pair."""
    lines = resources.files("guardstream.samples").joinpath("posts.jsonl").read_text("utf-8")
    posts = []
    for line in lines.splitlines():
        if line.strip():
            item: dict[str, Any] = json.loads(line)
            posts.append(
                new_post(
                    item["text"],
                    tenant=tenant,
                    kind=Kind(item.get("kind", "prompt")),
                    prompt=item.get("prompt"),
                    lang=item.get("lang"),
                )
            )
    return posts


@asynccontextmanager
async def decision_watcher(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    names = TopicNames(settings.namespace)
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        client_id="guardstream-watch",
    )
    await consumer.start()
    try:
        partitions = []
        for topic in ACTION_TOPICS:
            for p in sorted(consumer.partitions_for_topic(names[topic]) or ()):
                partitions.append(TopicPartition(names[topic], p))
        if not partitions:
            raise RuntimeError("action topics do not exist: run `guardstream topics create`")
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolve the end offsets now, before sending
        yield consumer
    finally:
        await consumer.stop()


async def send(settings: Settings, posts: Sequence[Post]) -> None:
    producer = make_producer(settings, client_id="guardstream-produce")
    await producer.start()
    try:
        topic = TopicNames(settings.namespace)[Topic.POSTS]
        acks = []
        for post in posts:
            # Each post starts its own trace; triage, the scorer and the decision continue it.
            attributes = {
                "guardstream.tenant": post.tenant,
                "guardstream.post_id_hash": tracing.hashed(post.post_id),
            }
            with tracing.producer_span(topic, **attributes) as headers:
                acks.append(
                    await producer.send(
                        topic, post.to_json(), key=post.post_id.encode(), headers=headers
                    )
                )
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def send_and_wait(
    settings: Settings, posts: Sequence[Post], timeout_s: float
) -> AsyncIterator[tuple[str, Decision]]:
    """Yield (topic, decision) for each post's first decision as it arrives, until all arrived
    or the timeout passed."""
    pending = {p.post_id for p in posts}
    async with decision_watcher(settings) as watcher:
        await send(settings, posts)
        deadline = time.monotonic() + timeout_s
        while pending and (left := deadline - time.monotonic()) > 0:
            batches = await watcher.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for records in batches.values():
                for record in records:
                    if record.value is None:
                        continue
                    decision = Decision.from_json(record.value)
                    if decision.post_id in pending:
                        pending.discard(decision.post_id)
                        yield record.topic, decision
