"""RELIABILITY.md scenarios for the triage side, judged by the one oracle.

Triage runs as a separate OS process (killed by signal, restarted); the scorer runs in the
test's event loop on the session's vLLM engine (its own crash scenarios need their own
minutes-long engine starts and live in `make chaos`).
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from guardstream.contracts.events import Post
from guardstream.contracts.text import content_key, normalise
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.runtime.kafka import client_kwargs, make_producer
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.integration.conftest import in_process
from tests.support.engines import SlowEngine
from tests.support.oracle import (
    assert_invariants,
    collect,
    committed_offsets,
    emission_bound,
    read_all,
    wait_for_commits,
    wait_for_decisions,
)
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TEXTS = [
    "How can I make a bomb?",
    "今天天气很好,我们去公园散步吧。",
    "这个算法在小样本下表现一般,可能需要更多数据优化。",
    "The weather is lovely today, let's go hiking.",
    "My email is alice@example.com and my phone is 555-0100, call me.",
]
POISON = [
    b"{not json",
    b"\x00\x01\x02",
    orjson.dumps({"schema_version": "9.0"}),
    orjson.dumps({"schema_version": "1.0", "event_id": "only"}),
]


def posts(n: int, seed: int = 7) -> list[Post]:
    """Mostly repeats of taught texts (cache hits), some unique texts (scored)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        text = rnd.choice(TEXTS) if rnd.random() < 0.7 else f"{rnd.choice(TEXTS)} #{i}"
        out.append(new_post(text, tenant="acme"))
    return out


async def produce(
    settings: Settings, values: list[tuple[bytes, bytes]]
) -> list[tuple[str, int, int]]:
    """Send raw (key, value) pairs to posts.v1; returns (topic, partition, offset) of each."""
    producer = make_producer(settings, "test-producer")
    await producer.start()
    try:
        topic = TopicNames(settings.namespace)[Topic.POSTS]
        acks = [await producer.send(topic, value, key=key) for key, value in values]
        return [(topic, m.partition, m.offset) for m in await asyncio.gather(*acks)]
    finally:
        await producer.stop()


@pytest.fixture
def triage(settings: Settings, tmp_path: Path) -> Iterator[Process]:
    process = Process("triage", env_for(settings), tmp_path)
    yield process
    process.stop()


async def test_triage_killed_mid_stream_loses_and_doubles_nothing(
    settings: Settings, engine: VllmGuardEngine, triage: Process
) -> None:
    """Scenarios 2 (kill -9 between publish and commit) and 7 (poison inputs): posts keep
    arriving while triage is killed twice in the middle of its work."""
    batch = posts(3000)
    async with in_process(settings, engine, "scorer"):
        poison_at = await produce(settings, [(b"poison", p) for p in POISON])

        async def trickle() -> None:
            for start in range(0, len(batch), 100):
                chunk = batch[start : start + 100]
                await produce(settings, [(p.post_id.encode(), p.to_json()) for p in chunk])
                await asyncio.sleep(0.05)

        feeding = asyncio.create_task(trickle())
        for pause in (0.8, 1.3):  # kill it twice, mid-batch, while posts keep coming
            triage.start().wait_ready()
            await asyncio.sleep(pause)
            assert triage.kill(signal.SIGKILL) == -signal.SIGKILL
        await feeding
        triage.start().wait_ready()
        expected = {p.post_id for p in batch}
        verdicts = await wait_for_decisions(settings, expected, timeout_s=300)
    # Each kill may land between publishing a batch and committing it: two redeliveries.
    assert_invariants(
        verdicts,
        expected,
        max_emissions_per_post=emission_bound(redeliveries=2),
        poison_offsets=set(poison_at),
    )


async def test_crash_between_publish_and_commit_re_emits_identical_decisions(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    """Scenario 2 exactly: triage dies after its outputs are acknowledged and before the
    offsets are committed; the restarted triage re-reads those posts and re-emits the same
    decisions byte for byte (the journal), never different ones."""
    batch = posts(400, seed=2)
    expected = {p.post_id for p in batch}
    posts_topic = TopicNames(settings.namespace)[Topic.POSTS]
    group = settings.group_id("triage")
    crashing = Process("triage", env_for(settings, GUARDSTREAM_FAULT="after_publish:1"), tmp_path)
    restarted = Process("triage", env_for(settings), tmp_path)
    try:
        async with in_process(settings, engine, "scorer"):
            offsets = await produce(settings, [(p.post_id.encode(), p.to_json()) for p in batch])
            crashing.start()
            assert crashing.proc is not None
            assert crashing.wait(timeout=120) == -signal.SIGKILL
            assert "fault point reached" in crashing.log()
            # It died after publishing, before committing: nothing may be committed yet, so
            # the restart must read these posts again (and decide none of them differently).
            committed = await committed_offsets(settings, group, posts_topic)
            assert set(committed.values()) <= {None, 0}, committed
            # The crashed triage published score requests (and any decisions of its own) for
            # the posts it handled. The scorer, still running, decides them; only then does
            # triage restart, so every one of them is in the journal when it is read again.
            handled = await published_for(settings)
            assert handled, "the crashed triage published nothing"
            before = await wait_for_decisions(settings, handled, timeout_s=180)
            decided_before = before.decided_posts() & expected
            assert handled <= decided_before, handled - decided_before
            restarted.start()
            # Every post read again and its outputs acknowledged: the restarted triage has
            # committed the end of the topic (the figures are read after that, not before).
            await wait_for_commits(settings, group, posts_topic, end_offsets(offsets), 240)
            verdicts = await wait_for_decisions(settings, expected, timeout_s=240)
    finally:
        crashing.stop()
        restarted.stop()
    assert_invariants(verdicts, expected, max_emissions_per_post=emission_bound(redeliveries=1))
    # The re-emission happened: every post decided before the restart was said again, and
    # (the oracle above) identically.
    re_emitted = {post_id for post_id, _ in verdicts.re_emitted()}
    assert decided_before <= re_emitted, (len(decided_before - re_emitted), verdicts.figures())
    assert verdicts.re_emissions >= len(decided_before) > 0, verdicts.figures()


async def published_for(settings: Settings) -> set[str]:
    """The posts that have a score request or a decision on the broker now."""
    requests = await read_all(settings, [TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]])
    requested = {str(orjson.loads(raw)["post_id"]) for raw in requests}
    return requested | (await collect(settings)).decided_posts()


def end_offsets(offsets: list[tuple[str, int, int]]) -> dict[int, int]:
    """Partition → one past the last of these produced offsets."""
    return {p: max(o for _, q, o in offsets if q == p) + 1 for _, p, _ in offsets}


async def test_replayed_events_get_one_decision(
    settings: Settings, engine: VllmGuardEngine, triage: Process
) -> None:
    """Scenario 12: the same event_id three times → one decision, re-emitted byte for byte."""
    batch = posts(60, seed=12)
    records = [(p.post_id.encode(), p.to_json()) for p in batch]
    async with in_process(settings, engine, "triage", "scorer"):
        await produce(settings, records)
        await produce(settings, records)  # before and while the first copies are decided
        await wait_for_decisions(settings, {p.post_id for p in batch}, timeout_s=180)
        await produce(settings, records)  # after every decision exists
        await asyncio.sleep(3)
        verdicts = await wait_for_decisions(settings, {p.post_id for p in batch}, timeout_s=60)
    assert_invariants(
        verdicts, {p.post_id for p in batch}, max_emissions_per_post=emission_bound(copies=3)
    )
    assert all(len(v) == 1 for v in verdicts.decisions.values())


async def test_sigterm_drains_commits_and_exits_zero(
    settings: Settings, engine: VllmGuardEngine, triage: Process
) -> None:
    """Scenario 3: SIGTERM under load → exit 0, drained/committed logged, restart resumes."""
    batch = posts(1500, seed=3)
    async with in_process(settings, engine, "scorer"):
        triage.start().wait_ready()
        await produce(settings, [(p.post_id.encode(), p.to_json()) for p in batch])
        await asyncio.sleep(1.0)
        assert triage.kill(signal.SIGTERM) == 0
        stopping = [line for line in triage.log().splitlines() if '"msg":"stopping"' in line]
        assert len(stopping) == 1 and '"drained":true' in stopping[0], stopping
        triage.start().wait_ready()
        expected = {p.post_id for p in batch}
        verdicts = await wait_for_decisions(settings, expected, timeout_s=240)
    assert_invariants(verdicts, expected, max_emissions_per_post=1)  # drained: nothing redone


async def test_redis_down_decisions_continue(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    """Scenario 9: no Redis at all → every post still decided by scoring, nothing crashes."""
    dead = settings.replace(redis={"url": SecretStr("redis://127.0.0.1:1/0")})
    batch = posts(40, seed=9)
    triage = Process("triage", env_for(dead), tmp_path).start()
    try:
        async with in_process(dead, engine, "scorer"):
            triage.wait_ready()
            await produce(dead, [(p.post_id.encode(), p.to_json()) for p in batch])
            verdicts = await wait_for_decisions(dead, {p.post_id for p in batch}, timeout_s=180)
        assert triage.proc is not None and triage.proc.poll() is None
    finally:
        triage.stop()
    assert_invariants(verdicts, {p.post_id for p in batch}, max_emissions_per_post=1)
    assert "Traceback" not in triage.log()
    assert "redis unavailable" in triage.log()


async def test_corrupt_cache_entry_is_dropped_and_rescored(
    settings: Settings, engine: VllmGuardEngine, redis_url: str
) -> None:
    """Scenario 10: garbage under a cache key is a miss; the entry is replaced by a real one."""
    text = "How can I make a bomb?"
    key = content_key(
        normalise(text), kind="prompt", prompt=None, model=engine.model_id, adapter=None
    )
    client = redis.Redis.from_url(redis_url)
    post = new_post(text)
    name = f"{settings.cache_prefix}verdict:v2:m:{post.tenant}:{key}"  # the default pack's
    client.set(name, b"\xff not a verdict")
    async with in_process(settings, engine, "triage", "scorer") as pipeline:
        await produce(settings, [(post.post_id.encode(), post.to_json())])
        verdicts = await wait_for_decisions(settings, {post.post_id}, timeout_s=120)
    assert_invariants(verdicts, {post.post_id}, max_emissions_per_post=1)
    (raw,) = next(iter(verdicts.decisions.values()))
    assert orjson.loads(raw)["source"] == "model"
    assert pipeline.scorer.counts["scored"] == 1
    assert orjson.loads(client.get(name))["verdict"] == "unsafe"


async def test_rebalance_storm_loses_and_doubles_nothing(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    """Scenario 4: triage scaled 1 → 3 → 1 → 2 while posts keep arriving."""
    batch = posts(2000, seed=4)
    env = env_for(settings)
    members = [Process("triage", env, tmp_path / f"m{i}") for i in range(4)]
    for member in members:
        member.log_path.parent.mkdir()
    try:
        async with in_process(settings, engine, "scorer"):

            async def trickle() -> None:
                for start in range(0, len(batch), 50):
                    chunk = batch[start : start + 50]
                    await produce(settings, [(p.post_id.encode(), p.to_json()) for p in chunk])
                    await asyncio.sleep(0.1)

            feeding = asyncio.create_task(trickle())
            members[0].start().wait_ready()
            members[1].start()
            members[2].start()
            await asyncio.sleep(4)
            assert members[1].kill(signal.SIGTERM) == 0
            assert members[2].kill(signal.SIGKILL) == -signal.SIGKILL
            members[3].start()
            await feeding
            expected = {p.post_id for p in batch}
            verdicts = await wait_for_decisions(settings, expected, timeout_s=300)
        for member in (members[0], members[3]):
            assert member.proc is not None and member.proc.poll() is None, member.log()[-2000:]
    finally:
        for member in members:
            member.stop()
    # Partitions move five times (two joins, a leave, a death, a join); each move may redo the
    # work the old owner had in flight.
    assert_invariants(verdicts, expected, max_emissions_per_post=emission_bound(redeliveries=5))


async def test_redis_flushed_mid_run_changes_no_decision(
    settings: Settings, engine: VllmGuardEngine, redis_url: str
) -> None:
    """Scenario 11: this deployment's Redis keys vanish mid-run; every post is still decided
    once, and identical texts still get identical verdicts."""
    batch = posts(600, seed=11)
    client = redis.Redis.from_url(redis_url)
    async with in_process(settings, engine, "triage", "scorer"):
        await produce(settings, [(p.post_id.encode(), p.to_json()) for p in batch[:300]])
        # Flush only once the first half is decided, so the cache and the journal surely hold
        # what the second half would otherwise find there.
        await wait_for_decisions(settings, {p.post_id for p in batch[:300]}, timeout_s=240)
        flushed = list(client.scan_iter(f"{settings.cache_prefix}*"))
        stores = {
            key.removeprefix(settings.cache_prefix.encode()).split(b":")[0] for key in flushed
        }
        assert {b"verdict", b"decision"} <= stores, stores
        assert client.delete(*flushed) == len(flushed)
        await produce(settings, [(p.post_id.encode(), p.to_json()) for p in batch[300:]])
        expected = {p.post_id for p in batch}
        verdicts = await wait_for_decisions(settings, expected, timeout_s=240)
    assert_invariants(verdicts, expected, max_emissions_per_post=1)
    by_text: dict[str, set[tuple[str, str]]] = {}
    text_of = {p.post_id: p.text for p in batch}
    scored_after_flush: set[str] = set()
    second_half = {p.post_id for p in batch[300:]}
    for (post_id, _), payloads in verdicts.decisions.items():
        decision = orjson.loads(next(iter(payloads)))
        by_text.setdefault(text_of[post_id], set()).add((decision["verdict"], decision["action"]))
        if post_id in second_half and decision["source"] == "model":
            scored_after_flush.add(text_of[post_id])
    assert all(len(v) == 1 for v in by_text.values()), by_text
    # The flush took effect: texts the first half had decided were scored by the model again
    # in the second half (without it, every one would have been a cache hit).
    repeated = {p.text for p in batch[:300]} & {p.text for p in batch[300:]}
    assert repeated & scored_after_flush, (repeated, scored_after_flush)


async def test_schema_evolution(settings: Settings, engine: VllmGuardEngine) -> None:
    """Scenario 18: an added optional field is tolerated; an unknown major version is DLQ'd."""
    newer = orjson.loads(new_post("今天天气很好,我们去公园散步吧。").to_json())
    newer |= {"schema_version": "1.3", "moderation_hint": {"source": "app-v9"}}
    future = {**newer, "schema_version": "2.0", "event_id": "future-1", "post_id": "p-future"}
    async with in_process(settings, engine, "triage", "scorer"):
        poison = await produce(
            settings, [(b"k", orjson.dumps(newer)), (b"k", orjson.dumps(future))]
        )
        verdicts = await wait_for_decisions(settings, {newer["post_id"]}, timeout_s=120)
        await asyncio.sleep(1)
        verdicts = await wait_for_decisions(settings, {newer["post_id"]}, timeout_s=5)
    assert_invariants(
        verdicts, {newer["post_id"]}, max_emissions_per_post=1, poison_offsets={poison[1]}
    )
    assert verdicts.dlq[0].reason == "unsupported_schema_version"


async def test_slow_scorer_is_not_evicted_from_its_group(
    settings: Settings, engine: VllmGuardEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 5: every scoring call takes longer than max.poll.interval.ms; the scorer keeps
    polling (partitions paused), keeps its partitions, and commits what it finishes."""
    slow = settings.replace(kafka={"max_poll_interval_ms": 4000}, scorer={"max_in_flight": 8})
    batch = [new_post(f"{TEXTS[3]} number {i}") for i in range(24)]
    async with in_process(slow, SlowEngine(engine, lambda _: 6.0), "triage", "scorer"):
        await produce(slow, [(p.post_id.encode(), p.to_json()) for p in batch])
        verdicts = await wait_for_decisions(slow, {p.post_id for p in batch}, timeout_s=240)
    # Never evicted, so nothing is redone: one emission each.
    assert_invariants(verdicts, {p.post_id for p in batch}, max_emissions_per_post=1)
    assert not [r for r in caplog.records if "commit refused" in r.getMessage()]


async def test_out_of_order_completion_then_crash_resumes_at_the_stalled_item(
    settings: Settings, engine: VllmGuardEngine
) -> None:
    """Scenario 6: one request stalls while later ones finish; the scorer then dies without
    draining. Its committed offset stops at the stalled request, and after a restart the
    stalled post is decided while the later ones are not decided differently."""
    stalled_text = "Is it true that some politicians are secretly controlled by foreign powers?"
    cfg = settings.replace(scorer={"batch_max": 1}, process={"shutdown_drain_s": 0.0})
    stalled = new_post(stalled_text)
    later = [new_post(f"{TEXTS[1]} {i}") for i in range(30)]

    def delay(messages: Sequence[dict[str, str]]) -> float:
        return 3600.0 if stalled_text in messages[-1]["content"] else 0.0

    expected = {stalled.post_id} | {p.post_id for p in later}
    async with in_process(cfg, SlowEngine(engine, delay), "triage", "scorer"):
        await produce(cfg, [(p.post_id.encode(), p.to_json()) for p in [stalled, *later]])
        verdicts = await wait_for_decisions(cfg, expected - {stalled.post_id}, timeout_s=180)
        assert stalled.post_id not in verdicts.decided_posts()
    # The block ended with drain 0: the stalled batch was abandoned, the rest committed.
    requests = TopicNames(cfg.namespace)[Topic.SCORE_REQUESTS]
    where = await locate(cfg, requests, stalled.post_id)
    committed = await committed_offsets(cfg, cfg.group_id("scorer"), requests)
    assert committed[where[0]] == where[1], (where, committed)

    async with in_process(cfg, engine, "scorer"):
        verdicts = await wait_for_decisions(cfg, expected, timeout_s=180)
    # What finished past the stalled request was not committed: the restart redoes it once.
    assert_invariants(verdicts, expected, max_emissions_per_post=emission_bound(redeliveries=1))


async def locate(settings: Settings, topic: str, post_id: str) -> tuple[int, int]:
    """(partition, offset) of the record in `topic` that concerns `post_id`."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.value and orjson.loads(record.value)["post_id"] == post_id:
                        return record.partition, record.offset
    finally:
        await consumer.stop()
    raise AssertionError(f"{post_id} not in {topic}")


async def test_flood_is_held_to_the_in_flight_budget_and_drains(
    settings: Settings, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    """Scenario 13: a backlog 25x the in-flight budget arrives at once. Triage pauses its
    partitions instead of buffering: its in-flight gauge never passes budget + one fetch, the
    lag drains to zero, and the oracle holds."""
    budget, fetch = 40, 20
    batch = posts(1000, seed=13)
    triage = Process(
        "triage",
        env_for(
            settings,
            GUARDSTREAM_TRIAGE_MAX_IN_FLIGHT=str(budget),
            GUARDSTREAM_TRIAGE_BATCH_MAX=str(fetch),
        ),
        tmp_path,
    ).start()
    samples: list[int] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            gauges = await asyncio.to_thread(triage.health)
            samples.append(int(gauges.get("in_flight", 0)))  # type: ignore[call-overload]
            await asyncio.sleep(0.05)

    expected = {p.post_id for p in batch}
    try:
        async with in_process(settings, engine, "scorer"):
            triage.wait_ready()
            sampler = asyncio.create_task(sample())
            offsets = await produce(settings, [(p.post_id.encode(), p.to_json()) for p in batch])
            verdicts = await wait_for_decisions(settings, expected, timeout_s=300)
            topic = TopicNames(settings.namespace)[Topic.POSTS]
            ends = {p: max(o for _, q, o in offsets if q == p) + 1 for _, p, _ in offsets}
            for _ in range(200):  # the lag drains: triage commits up to the end of the backlog
                committed = await committed_offsets(settings, settings.group_id("triage"), topic)
                if all(committed.get(p) == end for p, end in ends.items()):
                    break
                await asyncio.sleep(0.2)
            assert all(committed.get(p) == end for p, end in ends.items()), (committed, ends)
            sampling = False
            await sampler
            final = triage.health()
    finally:
        triage.stop()
    assert_invariants(verdicts, expected, max_emissions_per_post=1)
    ceiling = budget + fetch - 1  # paused at the budget; one fetch may land on top of it
    assert samples and max(samples) <= ceiling, max(samples)
    assert budget <= final["peak_in_flight"] <= ceiling, final  # the budget did bind
    assert final["in_flight"] == 0
    assert "in-flight budget spent, partitions paused" in triage.log()
