"""`guardstream tail`: follow what guardstream writes — decisions, the DLQ, human reviews,
alerts and shadow verdicts — as it is written, filtered by post id, tenant or verdict; one
pretty line a record, or `--json` (one object a line).

It reads without a consumer group: nothing is committed and no process's offsets move. A
record that is not a valid event is shown as such (topic, partition, offset, why), never
skipped in silence and never a crash. Ctrl-C and SIGTERM stop it cleanly (exit 0).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
import typer
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from rich.markup import escape
from rich.text import Text

from guardstream.cli.common import err, load_settings, out
from guardstream.contracts.events import (
    Alert,
    ContractError,
    Decision,
    DlqRecord,
    Envelope,
    Review,
    ShadowRecord,
    Verdict,
    dump,
)
from guardstream.contracts.topics import ACTION_TOPICS, CATALOGUE, Topic, TopicNames
from guardstream.runtime.kafka import make_consumer
from guardstream.runtime.process import install_stop_signals
from guardstream.runtime.settings import Settings


class Stream(StrEnum):
    """What `tail --topic` names: a kind of output and the catalogue topics that carry it."""

    ACTION = "action"  # decisions: every actions.<action> topic
    DLQ = "dlq"
    REVIEW = "review"  # human review decisions (moderation.reviews.v1)
    ALERT = "alert"
    SHADOW = "shadow"


STREAM_TOPICS: dict[Stream, tuple[Topic, ...]] = {
    Stream.ACTION: ACTION_TOPICS,
    Stream.DLQ: (Topic.DLQ,),
    Stream.REVIEW: (Topic.REVIEWS,),
    Stream.ALERT: (Topic.ALERTS,),
    Stream.SHADOW: (Topic.SHADOW,),
}
EVENT_TYPES: dict[Stream, type[Envelope]] = {
    Stream.ACTION: Decision,
    Stream.DLQ: DlqRecord,
    Stream.REVIEW: Review,
    Stream.ALERT: Alert,
    Stream.SHADOW: ShadowRecord,
}
# Topics whose records are keyed by post_id: a DLQ record from one of them names its post.
POST_KEYED = frozenset(spec.topic for spec in CATALOGUE if spec.key == "post_id")


# --- what a record is, and whether it is shown (pure) -----------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One record as `tail` shows it: where it is, what it is about, and the event (or why
    it is not one)."""

    stream: Stream
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    post_id: str | None
    tenant: str | None
    verdicts: frozenset[str]
    event: Envelope | None
    error: str | None = None  # "reason: detail" when the record is not a valid event


@dataclass(frozen=True, slots=True)
class Filters:
    """Only records about one of these posts / tenants / with one of these verdicts (a
    filter left empty lets every record through; a record without the field does not match a
    filter that is set)."""

    post_ids: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    verdicts: frozenset[str] = frozenset()

    def match(self, seen: Seen) -> bool:
        return (
            (not self.post_ids or seen.post_id in self.post_ids)
            and (not self.tenants or seen.tenant in self.tenants)
            and (not self.verdicts or bool(seen.verdicts & self.verdicts))
        )


def read(
    stream: Stream,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    topics: dict[str, Topic],
) -> Seen:
    """The record as `tail` shows it; `topics` maps this deployment's physical names back to
    the catalogue."""
    where = (stream, topic, partition, offset, timestamp_ms)
    try:
        event = EVENT_TYPES[stream].from_json(value)
    except ContractError as exc:
        return Seen(*where, None, None, frozenset(), None, f"{exc.reason}: {exc.detail}")
    post_id, tenant, verdicts = _about(event, key, topics)
    return Seen(*where, post_id, tenant, verdicts, event)


def _about(
    event: Envelope, key: bytes | None, topics: dict[str, Topic]
) -> tuple[str | None, str | None, frozenset[str]]:
    match event:
        case Decision() | Review():
            return event.post_id, event.tenant, frozenset({event.verdict.value})
        case ShadowRecord():
            both = {event.serving_verdict.value, event.candidate_verdict.value}
            return event.post_id, event.tenant, frozenset(both)
        case Alert():
            return event.post_id, event.tenant, frozenset()
        case DlqRecord():
            post_id, tenant = _dead_post(event, key, topics)
            return post_id, tenant, frozenset()
    return None, None, frozenset()


def _dead_post(
    record: DlqRecord, key: bytes | None, topics: dict[str, Topic]
) -> tuple[str | None, str | None]:
    """The post and tenant a DLQ record is about: from its payload when that is a JSON object
    kept whole, else the post id from the key of a topic keyed by post_id."""
    payload: Any = None
    if not record.payload_truncated:
        try:
            payload = orjson.loads(base64.b64decode(record.payload_b64, validate=True))
        except (binascii.Error, orjson.JSONDecodeError):
            payload = None
    fields = payload if isinstance(payload, dict) else {}
    post_id, tenant = fields.get("post_id"), fields.get("tenant")
    if not isinstance(post_id, str) and topics.get(record.origin.topic) in POST_KEYED:
        try:
            post_id = key.decode() if key is not None else None
        except UnicodeDecodeError:
            post_id = None
    return (
        post_id if isinstance(post_id, str) else None,
        tenant if isinstance(tenant, str) else None,
    )


def as_json(seen: Seen) -> dict[str, Any]:
    """The record as one JSON object. A DLQ record's payload is left out (its size and
    SHA-256 stay): it is the refused input, possibly megabytes of user content."""
    row: dict[str, Any] = {
        "stream": seen.stream.value,
        "topic": seen.topic,
        "partition": seen.partition,
        "offset": seen.offset,
        "timestamp_ms": seen.timestamp_ms,
        "post_id": seen.post_id,
        "tenant": seen.tenant,
    }
    if seen.event is None:
        row["error"] = seen.error
        return row
    event = dump(seen.event)
    event.pop("payload_b64", None)
    row["event"] = event
    return row


VERDICT_STYLES = {"safe": "green", "unsafe": "red", "controversial": "yellow"}


def as_text(seen: Seen) -> Text:
    """The record as one line (a terminal wraps it; nothing is cut)."""
    at = datetime.fromtimestamp(seen.timestamp_ms / 1000, tz=UTC).strftime("%H:%M:%S")
    line = Text()
    line.append(f"{at} ", style="dim")
    event = seen.event
    ids = f"{seen.post_id or '-'} {seen.tenant or '-'} "
    match event:
        case Decision():
            conf = "" if event.confidence is None else f" {event.confidence:.3f}"
            line.append(f"{event.action.value:<7}", style="bold")
            line.append(f"{event.verdict.value:<14}", style=VERDICT_STYLES[event.verdict])
            line.append(ids)
            line.append(f"{', '.join(event.categories) or '-'}{conf} {event.source.value}: ")
            line.append(_one_line(event.reason), style="dim")
        case Review():
            line.append(f"{'review':<7}", style="bold")
            line.append(f"{event.verdict.value:<14}", style=VERDICT_STYLES[event.verdict])
            line.append(ids)
            line.append(
                f"{event.outcome.value} ({event.stage.value}) by {event.reviewer},"
                f" model said {event.model_verdict.value}; tags {', '.join(event.tags)}"
            )
            if event.reason:
                line.append(f": {_one_line(event.reason)}", style="dim")
        case ShadowRecord():
            line.append(f"{'shadow':<7}", style="bold")
            change = f"{event.serving_verdict.value}→{event.candidate_verdict.value}"
            line.append(f"{change:<14}")
            line.append(ids)
            line.append(
                f"candidate {event.candidate_adapter} vs {event.serving_adapter or 'base model'}"
            )
        case Alert():
            style = {"critical": "bold red", "warning": "yellow"}.get(event.severity, "")
            line.append(f"{'alert':<7}", style="bold")
            line.append(f"{event.severity.value:<14}", style=style)
            line.append(ids)
            line.append(f"{event.kind}: ")
            line.append(_one_line(event.summary), style="dim")
        case DlqRecord():
            line.append(f"{'dlq':<7}", style="bold red")
            line.append(f"{event.reason:<14}", style="red")
            line.append(ids)
            line.append(
                f"refused by {event.consumer} from {event.origin.topic}"
                f" {event.origin.partition}@{event.origin.offset} ({event.payload_size:,} bytes): "
            )
            line.append(_one_line(event.detail), style="dim")
        case _:
            line.append(f"{'?':<7}", style="bold magenta")
            line.append(f"not a valid {seen.stream.value} event ", style="magenta")
            line.append(f"{seen.topic} {seen.partition}@{seen.offset}: {seen.error}")
    return line


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the command -------------------------------------------------------------------------------


def tail(
    topic: Annotated[
        list[Stream] | None,
        typer.Option(
            "--topic",
            "-t",
            help="What to follow (repeat): action (allow/block/review decisions), dlq, review"
            " (human reviews), alert, shadow. Default: all of them.",
        ),
    ] = None,
    post_id: Annotated[
        list[str] | None, typer.Option(help="Only records about this post (repeat).")
    ] = None,
    tenant: Annotated[list[str] | None, typer.Option(help="Only this tenant (repeat).")] = None,
    verdict: Annotated[
        list[Verdict] | None,
        typer.Option(help="Only decisions, reviews and shadow records with this verdict (repeat)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object a line (DLQ payloads left out).")
    ] = False,
    from_beginning: Annotated[
        bool, typer.Option(help="Start at the oldest record kept, not at the end.")
    ] = False,
    count: Annotated[
        int, typer.Option(min=0, help="Stop after this many records shown (0: follow).")
    ] = 0,
) -> None:
    """Follow the output topics as they are written: decisions, the DLQ, human reviews,
    alerts and shadow verdicts, in this deployment's namespace.

    Reads without a consumer group (nothing is committed, no process is disturbed). Records
    that are not valid events are shown with the reason. Ctrl-C or SIGTERM stops it (exit 0);
    exit 1 when the broker cannot be reached, none of the topics exists, or the reader of
    its output went away (a closed pipe)."""
    streams = tuple(dict.fromkeys(topic or list(Stream)))
    filters = Filters(
        frozenset(post_id or ()),
        frozenset(tenant or ()),
        frozenset(v.value for v in verdict or ()),
    )
    settings = load_settings()
    emit = _print_json if as_json else _print_text
    try:
        code = asyncio.run(_follow(settings, streams, filters, from_beginning, count, emit))
    except KafkaError as exc:
        err.print(
            f"[red]the broker at {escape(settings.kafka.bootstrap)} did not answer:[/red]"
            f" {escape(str(exc) or type(exc).__name__)} (is it up? `guardstream doctor`)"
        )
        code = 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, let nothing flush into the closed pipe,
        # and exit 1 as rich does when the pretty output's pipe closes.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    if code:
        raise typer.Exit(code)


def _print_json(seen: Seen) -> None:
    sys.stdout.write(orjson.dumps(as_json(seen)).decode() + "\n")
    sys.stdout.flush()


def _print_text(seen: Seen) -> None:
    out.print(as_text(seen), soft_wrap=True, highlight=False)


async def _follow(
    settings: Settings,
    streams: Iterable[Stream],
    filters: Filters,
    from_beginning: bool,
    count: int,
    emit: Callable[[Seen], None],
) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    names = TopicNames(settings.namespace)
    stream_of = {names[t]: s for s in streams for t in STREAM_TOPICS[s]}
    catalogue = {names[t]: t for t in Topic}
    consumer = make_consumer(settings, group_id=None, client_id="guardstream-tail", max_records=500)
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic, so absent ones can be named
        partitions = [
            TopicPartition(name, p)
            for name in stream_of
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        absent = [name for name in stream_of if not consumer.partitions_for_topic(name)]
        if absent:
            err.print(
                f"[yellow]not on the broker (yet):[/yellow] {escape(', '.join(absent))}"
                " (`guardstream topics create` makes them; a topic made later is not followed)"
            )
        if not partitions:
            return 1
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # fixed now: everything written from here on is shown
        err.print(
            f"following {len(stream_of) - len(absent)} topic(s)"
            f" {'from the beginning' if from_beginning else 'from now'}; Ctrl-C stops",
            style="dim",
        )
        shown = 0
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    seen = read(
                        stream_of[record.topic],
                        record.topic,
                        record.partition,
                        record.offset,
                        record.timestamp,
                        record.key,
                        record.value,
                        catalogue,
                    )
                    if not filters.match(seen):
                        continue
                    emit(seen)
                    shown += 1
                    if count and shown >= count:
                        return 0
        return 0
    finally:
        await consumer.stop()
