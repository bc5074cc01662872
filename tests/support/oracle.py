"""The one invariant oracle every reliability scenario is judged by (shared/RELIABILITY.md).

It reads every record the run produced (action topics and DLQ, from the beginning) and checks:
nothing missing, no post with two *different* decisions for one policy (identical re-emissions
are allowed but bounded and counted), and a DLQ holding exactly the injected poison.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from guardstream.core.contracts import Decision, DlqRecord
from guardstream.core.kafka import client_kwargs
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames

ACTION_TOPICS = (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)


@dataclass
class Verdicts:
    decisions: dict[tuple[str, str], set[bytes]] = field(default_factory=lambda: defaultdict(set))
    emissions: int = 0
    dlq: list[DlqRecord] = field(default_factory=list)

    def decided_posts(self) -> set[str]:
        return {post_id for post_id, _ in self.decisions}

    def figures(self) -> dict[str, int]:
        """What a chaos run reports: decisions, emissions, identical re-emissions, DLQ."""
        return {
            "decided": len(self.decisions),
            "emissions": self.emissions,
            "re_emissions": self.emissions - len(self.decisions),
            "dlq": len(self.dlq),
        }

    def conflicting(self) -> dict[tuple[str, str], set[bytes]]:
        """(post, policy) pairs with more than one distinct decision payload."""
        return {k: v for k, v in self.decisions.items() if len(v) > 1}


async def read_records(
    settings: Settings, topics: list[str], timeout_s: float = 10, *, settle_s: float = 0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record currently in `topics`, from offset 0 to the end. With `settle_s`, the end
    is where nothing more arrives for that long, for brokers whose reported end offsets are
    wrong (tansu 0.6 on `s3://` storage under-reports them)."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        if settle_s:
            quiet_since = asyncio.get_running_loop().time()
            while asyncio.get_running_loop().time() - quiet_since < settle_s:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("the topics did not settle")
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(r for r in batch if r.value is not None)
                    quiet_since = asyncio.get_running_loop().time()
            return records
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("could not read the topics to their end")
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(r for r in batch if r.value is not None)
        return records
    finally:
        await consumer.stop()


async def read_all(
    settings: Settings, topics: list[str], timeout_s: float = 10, *, settle_s: float = 0
) -> list[bytes]:
    """Every record value currently in `topics`, from offset 0 to the end."""
    records = await read_records(settings, topics, timeout_s, settle_s=settle_s)
    return [r.value for r in records if r.value is not None]


async def collect(
    settings: Settings, *, settle_s: float = 0, read_timeout_s: float = 10
) -> Verdicts:
    names = TopicNames(settings.namespace)
    out = Verdicts()
    actions = [names[t] for t in ACTION_TOPICS]
    for raw in await read_all(settings, actions, read_timeout_s, settle_s=settle_s):
        decision = Decision.from_json(raw)
        out.decisions[(decision.post_id, decision.policy)].add(raw)
        out.emissions += 1
    dlq = await read_all(settings, [names[Topic.DLQ]], read_timeout_s, settle_s=settle_s)
    out.dlq = [DlqRecord.from_json(raw) for raw in dlq]
    return out


async def wait_for_decisions(
    settings: Settings,
    post_ids: set[str],
    timeout_s: float,
    poll_s: float = 1.0,
    *,
    settle_s: float = 0,
    read_timeout_s: float = 10,
) -> Verdicts:
    """Poll until every post has a decision (or the timeout passes); returns the last read."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        verdicts = await collect(settings, settle_s=settle_s, read_timeout_s=read_timeout_s)
        if post_ids <= verdicts.decided_posts() or asyncio.get_running_loop().time() > deadline:
            return verdicts
        await asyncio.sleep(poll_s)


def assert_invariants(
    verdicts: Verdicts,
    expected_posts: set[str],
    *,
    poison_offsets: set[tuple[str, int, int]] = frozenset(),  # type: ignore[assignment]
    max_emissions_per_post: int = 4,
) -> None:
    missing = expected_posts - verdicts.decided_posts()
    assert not missing, f"{len(missing)} posts never decided, e.g. {sorted(missing)[:3]}"
    conflicting = verdicts.conflicting()
    assert not conflicting, f"{len(conflicting)} posts with different decisions: {conflicting}"
    assert verdicts.emissions <= max_emissions_per_post * len(verdicts.decisions), (
        "re-emissions are unbounded"
    )
    dead = {(d.origin.topic, d.origin.partition, d.origin.offset) for d in verdicts.dlq}
    assert dead == set(poison_offsets), f"DLQ {sorted(dead)} != injected {sorted(poison_offsets)}"
    for record in verdicts.dlq:
        assert record.reason and record.attempts == 1


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int | None]:
    """The consumer group's committed offset per partition of `topic` (None: never committed)."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in parts}
    finally:
        await consumer.stop()


@dataclass
class CommitAudit:
    """Where a consumer group's committed offsets stand against the decisions made so far."""

    committed: dict[int, int | None]
    # (partition, offset, post_id) of records the commit passed although their post is
    # undecided: must be empty (a crash there would lose the post).
    passed_undecided: list[tuple[int, int, str]]
    # Undecided records at or after the commit: the work a restart must redo.
    pending: list[tuple[int, int, str]]


async def audit_commits(
    settings: Settings, group: str, topic: str, decided: set[str]
) -> CommitAudit:
    """Compare `group`'s committed offsets on `topic` (records carrying a `post_id`, such as
    score requests) with the posts that have a decision."""
    committed = await committed_offsets(settings, group, topic)
    passed, pending = [], []
    for record in await read_records(settings, [topic]):
        post_id = str(orjson.loads(record.value or b"{}").get("post_id"))
        if post_id in decided:
            continue
        mark = committed.get(record.partition) or 0
        where = (record.partition, record.offset, post_id)
        (passed if record.offset < mark else pending).append(where)
    return CommitAudit(committed, passed, pending)


def record_figures(scenario: str, verdicts: Verdicts, posts: int, **extra: object) -> None:
    """Append a scenario's figures as one JSON line to `GUARDSTREAM_CHAOS_REPORT` (set by
    `make chaos`; the README quotes the last run). Nothing is written when it is unset."""
    path = os.environ.get("GUARDSTREAM_CHAOS_REPORT")
    if not path:
        return
    line = {"scenario": scenario, "posts": posts, **verdicts.figures(), **extra}
    with open(path, "ab") as out:
        out.write(orjson.dumps(line, default=str) + b"\n")
