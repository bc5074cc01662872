"""The one invariant oracle every reliability scenario is judged by (shared/RELIABILITY.md).

It reads every record the run produced (action topics and DLQ, from the beginning) and checks:
nothing missing, no post with two *different* decisions for one policy, no post emitted more
often than its scenario allows (`emission_bound`: identical re-emissions are counted per post,
never averaged over the run), and a DLQ holding exactly the injected poison.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from guardstream.contracts.events import Decision, DlqRecord
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import client_kwargs
from guardstream.runtime.settings import Settings

ACTION_TOPICS = (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)

PostPolicy = tuple[str, str]


def emission_bound(*, redeliveries: int = 0, copies: int = 1) -> int:
    """How often one post may be emitted in a scenario (docs/concepts/reliability.md): once per
    copy of its event on the posts topic, and once more per redelivery the scenario forces
    (a consumer killed between publishing and committing, a partition moved while its work
    was in flight). A run with neither emits each decision exactly once."""
    return copies * (1 + redeliveries)


@dataclass
class Verdicts:
    decisions: dict[PostPolicy, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    emitted: Counter[PostPolicy] = field(default_factory=Counter)  # records per (post, policy)
    dlq: list[DlqRecord] = field(default_factory=list)

    @property
    def emissions(self) -> int:
        return self.emitted.total()

    @property
    def re_emissions(self) -> int:
        """Identical decisions emitted again: every record past the first of its post."""
        return self.emissions - len(self.emitted)

    def re_emitted(self) -> dict[PostPolicy, int]:
        """(post, policy) → how many times it was emitted, for those emitted more than once."""
        return {key: n for key, n in self.emitted.items() if n > 1}

    def decided_posts(self) -> set[str]:
        return {post_id for post_id, _ in self.decisions}

    def figures(self) -> dict[str, int]:
        """What a chaos run reports: decisions, emissions, identical re-emissions, DLQ."""
        return {
            "decided": len(self.decisions),
            "emissions": self.emissions,
            "re_emissions": self.re_emissions,
            "most_emissions_of_a_post": max(self.emitted.values(), default=0),
            "dlq": len(self.dlq),
        }

    def conflicting(self) -> dict[PostPolicy, set[bytes]]:
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
        out.emitted[(decision.post_id, decision.policy)] += 1
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
    max_emissions_per_post: int,
    poison_offsets: set[tuple[str, int, int]] = frozenset(),  # type: ignore[assignment]
) -> None:
    """The invariants, with the scenario's own bound on emissions per post (`emission_bound`;
    every caller states it, so a test without a crash promises exactly one)."""
    missing = expected_posts - verdicts.decided_posts()
    assert not missing, f"{len(missing)} posts never decided, e.g. {sorted(missing)[:3]}"
    conflicting = verdicts.conflicting()
    assert not conflicting, f"{len(conflicting)} posts with different decisions: {conflicting}"
    over = {key: n for key, n in verdicts.emitted.items() if n > max_emissions_per_post}
    assert not over, (
        f"{len(over)} posts emitted more than {max_emissions_per_post} times, "
        f"e.g. {sorted(over.items(), key=lambda kv: -kv[1])[:3]}"
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


async def wait_for_commits(
    settings: Settings, group: str, topic: str, ends: dict[int, int], timeout_s: float
) -> dict[int, int | None]:
    """Poll until `group` has committed `ends` (partition → offset) on `topic`: the consumer
    has handled every record before them and its outputs were acknowledged (the commit tables,
    docs/concepts/delivery.md). Fails when the timeout passes first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        committed = await committed_offsets(settings, group, topic)
        if all(committed.get(p) == end for p, end in ends.items()):
            return committed
        assert asyncio.get_running_loop().time() < deadline, (committed, ends)
        await asyncio.sleep(0.2)


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
    `make chaos`; docs/concepts/reliability.md quotes the last run). Nothing is written when it
    is unset."""
    path = os.environ.get("GUARDSTREAM_CHAOS_REPORT")
    if not path:
        return
    line = {"scenario": scenario, "posts": posts, **verdicts.figures(), **extra}
    with open(path, "ab") as out:
        out.write(orjson.dumps(line, default=str) + b"\n")
