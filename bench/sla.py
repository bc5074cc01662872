"""What one SLA timer tick costs with many items pending, and how late downgrades fire.

One run, one machine, against a real Kafka-protocol broker (a memory-only tansu started here
on a free port, unless `KAFKA_BOOTSTRAP` is set), in its own namespace:

1. Index vs scan (pure): `--pending` items (default 100,000) with deadlines spread over the
   next two hours. One tick through the per-partition `DeadlineIndex` (pop what is due: nothing,
   then `--due` items) against the naive tick that scans every pending item's next due time.
2. The real SLA worker (`guardstream.sla.main.run`, the faust app with its agent, table and
   timer, in this process) holding `--pending` items. The items are put STRAIGHT INTO THE TABLE
   AND THE INDEX (no changelog writes, no source records): loading 100k items through the broker
   would take minutes on tansu and measures the agent, not the timer. `--due` of them have
   deadlines spread over `--due-spread-s` seconds starting 3 s after loading; the rest are due
   in 1-2 hours. Every tick is timed (items due, ms); lateness = a downgrade decision's
   `decided_at` − its deadline, read back from `moderation.actions.allow.v1`, so it includes
   publishing and the changelog writes through the broker. Before loading, `--through-broker`
   review decisions (default 3,000, due in 2 h) go through the broker and the agent: how many
   the agent enters per second (one awaited changelog write each).

Last line: one JSON object (`pending`, `tick_ms` = median tick with nothing due at that many
pending, `max_lateness_s`, and the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from guardstream.contracts.events import Action, Decision, Source, Verdict, utcnow
from guardstream.contracts.identity import PostIdentity
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.stack import tansu_command
from guardstream.policy import load_registry, review_sla
from guardstream.runtime.kafka import client_kwargs, ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from guardstream.sla import main as sla_main
from guardstream.sla.app import SlaWorker
from guardstream.sla.logic import DeadlineIndex, Item, stamp_due

SLA_S = 7200  # the shipped default pack
RETAIN = 7 * 24 * 3600.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def broker(workdir: Path) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    port = free_port()
    with (workdir / "tansu.log").open("wb") as log:
        proc = subprocess.Popen(tansu_command(port), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tansu did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_items(n: int, due: int, now: float, spread_s: float, seed: int) -> list[Item]:
    """`due` items with deadlines in [now+3, now+3+spread]; the rest 1-2 hours out."""
    rnd = random.Random(seed)
    sla = review_sla(load_registry(None).default, ())
    items = []
    for i in range(n):
        deadline = now + 3 + rnd.uniform(0, spread_s) if i < due else now + rnd.uniform(3600, 7200)
        decided = deadline - SLA_S
        warned = decided + sla.warn_after_s < now + 3
        items.append(
            Item(
                identity=PostIdentity(
                    tenant="bench",
                    post_id=f"bench-{i}",
                    post_event_id=f"ev-{i}",
                    policy="default@1",
                    content_key=f"{i:032x}",
                ),
                partition=i % 6,
                decision_id=uuid.UUID(int=rnd.getrandbits(128)).hex,
                model="bench",
                adapter=None,
                decided_at=decided,
                deadline_s=sla.deadline_s,
                deadline_at=deadline,
                warn_at=decided + sla.warn_after_s,
                assign_by=decided + sla.assign_within_s,
                assigned_at=decided,  # assigned: the assignment SLA stays quiet
                # Warned already where the warning time has passed: this run measures expiry.
                stamped={"warning": decided + sla.warn_after_s} if warned else {},
                sent=frozenset({"warning"}) if warned else frozenset(),
            )
        )
    return items


def index_vs_scan(items: list[Item], due: int) -> dict[str, float]:
    index = DeadlineIndex()
    for item in items:
        index.schedule(item.post_id, item.next_due(RETAIN))
    by_id = {item.post_id: item for item in items}
    deadlines = sorted(item.deadline_at for item in items)
    quiet = min(item.next_due(RETAIN) for item in items) - 1
    started = time.perf_counter()
    for _ in range(100):
        assert not index.pop_due(quiet)
    idle_ms = (time.perf_counter() - started) * 1000 / 100
    busy_at = deadlines[due - 1]
    started = time.perf_counter()
    fired = [stamp_due(by_id[p], busy_at) for p in index.pop_due(busy_at)]
    busy_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    scanned = [stamp_due(i, busy_at) for i in items if i.next_due(RETAIN) <= busy_at]
    scan_ms = (time.perf_counter() - started) * 1000
    assert len(fired) == len(scanned) == due
    return {"index_idle_ms": idle_ms, "index_due_ms": busy_ms, "scan_ms": scan_ms}


async def read_downgrades(settings: Settings) -> list[Decision]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = TopicNames(settings.namespace)[Topic.ALLOW]
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[Decision] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(Decision.from_json(r.value) for r in records)
        return [d for d in out if d.source is Source.SLA_TIMEOUT]
    finally:
        await consumer.stop()


async def through_the_agent(settings: Settings, worker: SlaWorker, n: int) -> float:
    """Review decisions through the broker and the agent (deadlines 2 h out): entered per s."""
    producer = make_producer(settings, client_id="bench-sla")
    await producer.start()
    topic = TopicNames(settings.namespace)[Topic.REVIEW]
    try:
        for i in range(n):
            ident = uuid.uuid4().hex
            decision = Decision(
                event_id=ident,
                produced_at=utcnow(),
                decision_id=ident,
                post_id=f"agent-{i}",
                post_event_id=f"agent-ev-{i}",
                tenant="bench",
                verdict=Verdict.CONTROVERSIAL,
                action=Action.REVIEW,
                confidence=0.6,
                reason="bench",
                source=Source.MODEL,
                model="bench",
                policy="default@1",
                content_key=f"{i:032x}",
                decided_at=utcnow(),
            )
            await producer.send(topic, decision.to_json(), key=decision.post_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    started = time.perf_counter()
    while worker.deadlines.pending_count() < n:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return n / (time.perf_counter() - started)


def load(worker: SlaWorker, items: list[Item]) -> None:
    for item in items:
        # Straight into the table and the index (see the module docstring).
        worker.table.data[item.post_id] = item.to_dict()
        worker._track(item)


async def run_worker(args: argparse.Namespace, bootstrap: str) -> dict[str, float | int]:
    settings = Settings(
        namespace=f"bsla{uuid.uuid4().hex[:8]}",
        kafka={"bootstrap": bootstrap},
        sla={"tick_s": args.tick_s, "data_dir": Path(tempfile.mkdtemp(prefix="bench-sla-"))},
        process={"log_level": "WARNING"},
    )
    await ensure_topics(settings)
    stop = asyncio.Event()
    holder: list[SlaWorker] = []
    task = asyncio.create_task(sla_main.run(settings, stop, expose=holder.append))
    deadline = time.monotonic() + 120
    while not (holder and holder[0].ready):
        if task.done() or time.monotonic() > deadline:
            stop.set()
            await task
            raise RuntimeError("SLA worker did not become ready")
        await asyncio.sleep(0.1)
    worker = holder[0]
    agent_rate = await through_the_agent(settings, worker, args.through_broker)
    say(f"agent: {args.through_broker:,} review decisions at {agent_rate:,.0f}/s")
    loaded = time.perf_counter()
    # The far items first, then the due ones with deadlines counted from *after* loading: the
    # loading itself blocks the loop and must not count as lateness.
    # Together with the decisions already entered through the agent: `--pending` in all.
    injected = args.pending - args.through_broker
    far = make_items(injected, 0, time.time(), args.due_spread_s, args.seed)[args.due :]
    load(worker, far)
    items = make_items(args.due, args.due, time.time(), args.due_spread_s, args.seed + 1)
    load(worker, items)
    load_s = time.perf_counter() - loaded
    worker.ticks.clear()
    total = len(far) + len(items) + args.through_broker
    say(f"loaded {total:,} items in {load_s:.1f} s; waiting for {args.due:,} downgrades")
    wait_until = time.monotonic() + 3 + args.due_spread_s + 60
    while worker.counts["expired"] < args.due and time.monotonic() < wait_until:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(2 * args.tick_s)  # a few idle ticks after the last downgrade
    ticks = list(worker.ticks)
    status = worker.status()
    stop.set()
    await task
    downgrades = await read_downgrades(settings)
    deadlines = {i.post_id: i.deadline_at for i in items}
    lateness = sorted(d.decided_at.timestamp() - deadlines[d.post_id] for d in downgrades)
    idle = [ms for n, ms in ticks if n == 0]
    busy = [ms for n, ms in ticks if n > 0]
    return {
        "agent_decisions_per_s": agent_rate,
        "downgrades": len({d.post_id for d in downgrades}),
        "downgrade_records": len(downgrades),
        "pending_at_end": status["pending"],
        "ticks": len(ticks),
        "tick_ms": statistics.median(idle) if idle else float("nan"),
        "tick_ms_max_idle": max(idle, default=float("nan")),
        "busy_ticks": len(busy),
        "busy_tick_ms_median": statistics.median(busy) if busy else float("nan"),
        "busy_tick_ms_max": max(busy, default=float("nan")),
        "max_lateness_s": lateness[-1] if lateness else float("nan"),
        "p50_lateness_s": lateness[len(lateness) // 2] if lateness else float("nan"),
        "p99_lateness_s": lateness[int(len(lateness) * 0.99)] if lateness else float("nan"),
        "min_lateness_s": lateness[0] if lateness else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=2_000, help="items that expire in the run")
    parser.add_argument("--due-spread-s", type=float, default=10.0)
    parser.add_argument("--tick-s", type=float, default=1.0, help="GUARDSTREAM_SLA_TICK_S")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--through-broker", type=int, default=3_000, help="review decisions sent via the agent"
    )
    args = parser.parse_args()
    if args.pending < args.due + args.through_broker:
        parser.error("--pending must be at least --due + --through-broker")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    now = time.time()
    pure = index_vs_scan(
        make_items(args.pending, args.due, now, args.due_spread_s, args.seed), args.due
    )
    say(
        f"pure, {args.pending:,} pending: index tick {pure['index_idle_ms']:.4f} ms idle, "
        f"{pure['index_due_ms']:.1f} ms with {args.due:,} due; full scan {pure['scan_ms']:.1f} ms"
    )
    with tempfile.TemporaryDirectory() as tmp, broker(Path(tmp)) as bootstrap:
        real = asyncio.run(run_worker(args, bootstrap))
    say(
        f"worker, {args.pending:,} pending: idle tick {real['tick_ms']:.3f} ms (max "
        f"{real['tick_ms_max_idle']:.2f}); ticks with downgrades: median "
        f"{real['busy_tick_ms_median']:.1f} ms, max {real['busy_tick_ms_max']:.1f} ms; "
        f"lateness p50 {real['p50_lateness_s']:.3f} s, p99 {real['p99_lateness_s']:.3f} s, "
        f"max {real['max_lateness_s']:.3f} s (tick {args.tick_s:g} s)"
    )
    summary = {
        "pending": args.pending,
        "due": args.due,
        "tick_s": args.tick_s,
        **real,
        "pure_index_idle_ms": pure["index_idle_ms"],
        "pure_index_due_ms": pure["index_due_ms"],
        "pure_scan_ms": pure["scan_ms"],
        "scan_over_index_due": pure["scan_ms"] / max(pure["index_due_ms"], 1e-9),
    }
    print(orjson.dumps(summary).decode(), flush=True)
    return 0 if real["downgrades"] == args.due else 1


if __name__ == "__main__":
    sys.exit(main())
