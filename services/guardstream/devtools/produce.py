"""Send posts and wait for their outcomes: the smallest possible client of guardstream.

The watcher is assigned every partition of the action topics and the DLQ (no consumer group,
nothing committed) and positioned at their ends *before* anything is sent, so it sees exactly
the outcomes that follow: a decision, or the post (or its score request) dead-lettered.
Posts can come from a JSON Lines file: each line is checked on its own and every bad line is
reported by number; nothing is sent unless every line is good.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import (
    FREE_TEXT,
    LINE,
    ContractError,
    Decision,
    DlqRecord,
    Kind,
    Post,
    utcnow,
)
from guardstream.contracts.topics import ACTION_TOPICS, Topic, TopicNames
from guardstream.runtime import tracing
from guardstream.runtime.kafka import client_kwargs, make_producer
from guardstream.runtime.settings import Settings

WATCHED_TOPICS = (*ACTION_TOPICS, Topic.DLQ)
# Room for the record batch's own framing and the trace headers around a post's JSON.
RECORD_OVERHEAD_BYTES = 4096


def new_post(
    text: str,
    *,
    tenant: str = "default",
    kind: Kind = Kind.PROMPT,
    prompt: str | None = None,
    lang: str | None = None,
    region: str | None = None,
    post_id: str | None = None,
    author_id: str | None = None,
) -> Post:
    now = utcnow()
    return Post(
        event_id=str(uuid.uuid4()),
        produced_at=now,
        post_id=post_id or f"p-{uuid.uuid4().hex}",
        tenant=tenant,
        author_id=author_id or f"cli-{uuid.uuid4().hex[:12]}",
        text=text,
        kind=kind,
        prompt=prompt,
        lang=lang,
        region=region,
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


class PostLine(BaseModel):
    """One line of a `guardstream produce --jsonl` file: a post as its producer writes it.
    Only `text` is required; the envelope (event id, times) is made here. An unknown field is
    refused, so a misspelt one is not silently left out."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    text: StrictStr
    post_id: StrictStr | None = None
    tenant: StrictStr | None = None
    author_id: StrictStr | None = None
    kind: Kind | None = None
    prompt: StrictStr | None = None
    lang: StrictStr | None = None
    region: StrictStr | None = None


@dataclass(frozen=True, slots=True)
class JsonlPosts:
    posts: list[Post]
    problems: list[tuple[int, str]]  # (line number, what is wrong), no text of the line


def read_posts_jsonl(data: bytes, *, tenant: str = "default") -> JsonlPosts:
    """The posts of a JSON Lines file, one object a line (`PostLine`; `tenant` for lines that
    name none). Blank lines are skipped; every other line must be a valid post, and each one
    that is not is reported with its number and the fields at fault (never the text)."""
    posts: list[Post] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    # Split on the byte only: U+2028 and friends may stand unescaped inside a JSON string.
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        line = raw.removesuffix(b"\r")
        if not line.strip():
            continue
        try:
            post = _post_from_line(line, tenant)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        if post.post_id in first_line:
            problems.append((number, f"post_id repeats line {first_line[post.post_id]}"))
            continue
        first_line[post.post_id] = number
        posts.append(post)
    return JsonlPosts(posts, problems)


def _post_from_line(line: bytes, tenant: str) -> Post:
    try:
        item = PostLine.model_validate_json(line)
        return new_post(
            item.text,
            tenant=item.tenant if item.tenant is not None else tenant,
            kind=item.kind or Kind.PROMPT,
            prompt=item.prompt,
            lang=item.lang,
            region=item.region,
            post_id=item.post_id,
            author_id=item.author_id,
        )
    except ValidationError as exc:
        raise ValueError(_line_errors(exc)) from None


_CHARACTER_RULES = {LINE: "", FREE_TEXT: " (tab, newline and carriage return are allowed)"}


def _line_errors(exc: ValidationError, limit: int = 5) -> str:
    """What is wrong with a line, by field, in words a person acts on; never the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:limit]:
        where = ".".join(str(p) for p in error["loc"])
        pattern = (error.get("ctx") or {}).get("pattern")
        if error["type"] == "json_invalid":
            message = f"not a JSON object on one line ({error['ctx']['error']})"
        elif error["type"] == "model_type":
            message = "not a JSON object (each line is one post object)"
        elif error["type"] == "extra_forbidden":
            message = f"unknown field (a post has {', '.join(PostLine.model_fields)})"
        elif error["type"] == "string_pattern_mismatch" and pattern in _CHARACTER_RULES:
            message = (
                "holds a character no post may hold: a control character such as NUL"
                f"{_CHARACTER_RULES[pattern]}, or a lone surrogate"
            )
        else:
            message = error["msg"]
        parts.append(f"{where}: {message}" if where else message)
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def oversized(posts: Iterable[Post], max_request_bytes: int) -> list[tuple[Post, int]]:
    """The posts whose record is larger than a produce request may be, with their size in
    bytes: the producer would refuse them."""
    sizes = ((post, len(post.to_json()) + len(post.post_id.encode())) for post in posts)
    return [
        (post, size) for post, size in sizes if size + RECORD_OVERHEAD_BYTES > max_request_bytes
    ]


class TopicsMissing(PermanentError, RuntimeError):
    """The topics to watch do not exist on this broker (in this namespace)."""


@asynccontextmanager
async def decision_watcher(
    settings: Settings, topics: Sequence[Topic] = ACTION_TOPICS
) -> AsyncIterator[AIOKafkaConsumer]:
    names = TopicNames(settings.namespace)
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        client_id="guardstream-watch",
        fetch_max_bytes=max(settings.kafka.max_request_bytes, 52_428_800),
        max_partition_fetch_bytes=settings.kafka.max_request_bytes,
    )
    await consumer.start()
    try:
        partitions = []
        for topic in topics:
            for p in sorted(consumer.partitions_for_topic(names[topic]) or ()):
                partitions.append(TopicPartition(names[topic], p))
        if not partitions:
            raise TopicsMissing("action topics do not exist: run `guardstream topics create`")
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolve the end offsets now, before sending
        yield consumer
    finally:
        await consumer.stop()


async def send(
    settings: Settings, posts: Sequence[Post], on_acked: Callable[[], None] | None = None
) -> None:
    """Send `posts` to posts.v1 and wait until the broker has acknowledged all of them;
    `on_acked` is called once per acknowledged post (a progress bar)."""
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
                ack = await producer.send(
                    topic, post.to_json(), key=post.post_id.encode(), headers=headers
                )
            if on_acked is not None:
                ack.add_done_callback(lambda _: on_acked())
            acks.append(ack)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


@dataclass(frozen=True, slots=True)
class Decided:
    """A post's first decision, read from its action topic."""

    topic: str
    decision: Decision

    @property
    def post_id(self) -> str:
        return self.decision.post_id


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A post (or the score request made from it) that a process sent to the DLQ instead of
    deciding: it gets no decision."""

    topic: str
    post_id: str
    record: DlqRecord


Outcome = Decided | DeadLettered


async def send_and_watch(
    settings: Settings,
    posts: Sequence[Post],
    timeout_s: float,
    on_acked: Callable[[], None] | None = None,
) -> AsyncIterator[Outcome]:
    """Yield each post's outcome as it arrives (its first decision, or its DLQ record),
    until every post has one or the timeout passed. Records that are not valid events are
    passed over: a watcher must survive what a broken producer wrote to these topics."""
    pending = {p.post_id for p in posts}
    dlq = TopicNames(settings.namespace)[Topic.DLQ]
    async with decision_watcher(settings, WATCHED_TOPICS) as watcher:
        await send(settings, posts, on_acked)
        deadline = time.monotonic() + timeout_s
        while pending and (left := deadline - time.monotonic()) > 0:
            batches = await watcher.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for records in batches.values():
                for record in records:
                    outcome = (
                        _dead_lettered(record.topic, record.key, record.value, pending)
                        if record.topic == dlq
                        else _decided(record.topic, record.value, pending)
                    )
                    if outcome is not None:
                        pending.discard(outcome.post_id)
                        yield outcome


async def send_and_wait(
    settings: Settings, posts: Sequence[Post], timeout_s: float
) -> AsyncIterator[tuple[str, Decision]]:
    """Yield (topic, decision) for each post's first decision as it arrives, until all arrived
    or the timeout passed. Dead-lettered posts are left out (`send_and_watch` has them)."""
    async for outcome in send_and_watch(settings, posts, timeout_s):
        if isinstance(outcome, Decided):
            yield outcome.topic, outcome.decision


def _decided(topic: str, value: bytes | None, pending: set[str]) -> Decided | None:
    try:
        decision = Decision.from_json(value)
    except ContractError:
        return None
    return Decided(topic, decision) if decision.post_id in pending else None


def _dead_lettered(
    topic: str, key: bytes | None, value: bytes | None, pending: set[str]
) -> DeadLettered | None:
    """The DLQ record of a pending post: a post is keyed by its post_id; a score request
    (keyed by content) names its post_id in the payload, when the payload was kept whole."""
    try:
        record = DlqRecord.from_json(value)
    except ContractError:
        return None
    for post_id in (_text(key), _payload_post_id(record)):
        if post_id is not None and post_id in pending:
            return DeadLettered(topic, post_id, record)
    return None


def _text(raw: bytes | None) -> str | None:
    try:
        return None if raw is None else raw.decode()
    except UnicodeDecodeError:
        return None


def _payload_post_id(record: DlqRecord) -> str | None:
    if record.payload_truncated:
        return None
    try:
        payload = orjson.loads(base64.b64decode(record.payload_b64, validate=True))
    except (binascii.Error, orjson.JSONDecodeError):
        return None
    post_id = payload.get("post_id") if isinstance(payload, dict) else None
    return post_id if isinstance(post_id, str) else None
