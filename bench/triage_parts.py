"""Triage's per-post CPU by part, in process, over a batch of `bench/pipeline.py`'s posts.

No broker, no Redis: each part of what triage does for a post is timed alone over the same
generated batch (best of `--repeat`), in µs per post. A micro-benchmark to compare builds
of one part; `bench/pipeline.py` measures the whole process. The decision parts hand their
records to a producer that only counts them (no broker), with the telemetry SDK installed as
in the processes (no exporter), in batches of 500 as triage's.

glibc's malloc is first set as a long-running triage process ends up on its own (where its
dynamic mmap threshold has risen: no page faults after start-up): otherwise numpy's
temporaries of a few hundred KB may each be mapped and unmapped again, and the fingerprint
part measured anywhere between 13 and 26 µs depending on what ran before it.

    python bench/triage_parts.py --posts 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from bench.pipeline import Corpus, encode, standin_verdict

from guardstream.contracts.events import Decision, Post
from guardstream.contracts.text import normalise
from guardstream.policy import load_registry
from guardstream.runtime import telemetry, tracing
from guardstream.runtime.settings import Settings
from guardstream.verdict import neardup
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.intake import Triaged, Triager, score_request, score_request_json


class _CountingBatch:
    def __init__(self) -> None:
        self.records = 0

    def append(self, **_: object) -> int:
        self.records += 1
        return 1

    def record_count(self) -> int:
        return self.records


class _NoBroker:
    """The producer calls `Emitter` makes, answered at once: what is timed is the emitter."""

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> _CountingBatch:
        return _CountingBatch()

    async def send_batch(self, _batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent.set_result(SimpleNamespace(topic=topic, partition=partition, offset=0))
        return sent


def steady_malloc() -> None:
    """Large blocks from the heap and kept there (glibc only; elsewhere nothing changes)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's dynamic ceiling
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


def decisions_of(items: Sequence[Triaged], verdicts: Sequence[CachedVerdict]) -> list[Decision]:
    return [
        decide(
            verdict,
            Origin.CACHE,
            item.pack,
            post_id=item.post.post_id,
            post_event_id=item.post.event_id,
            tenant=item.post.tenant,
            content_key=item.content_key,
        )
        for item, verdict in zip(items, verdicts, strict=True)
    ]


def send_decisions(settings: Settings, decisions: Sequence[Decision], size: int = 500) -> None:
    """Each batch's decisions through an `Emitter` (serialised, headers, counted) and flushed,
    inside the batch's trace scope as the consumer runtime runs handlers."""

    async def run() -> None:
        for start in range(0, len(decisions), size):
            part = decisions[start : start + size]
            records = [
                SimpleNamespace(topic="posts", partition=0, offset=n, headers=[])
                for n in range(len(part))
            ]
            emitter = Emitter(_NoBroker(), settings, "triage")  # type: ignore[arg-type]
            batch = tracing.BatchTrace("triage", "bench", records)
            with tracing.batch_scope(batch):
                for record, decision in zip(records, part, strict=True):
                    tracing.bind(record, decision.post_event_id)
                for decision in part:
                    await emitter.decision(decision.to_json(), decision)
                await emitter.flush()
            batch.end()

    asyncio.run(run())


def best_us(work: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    steady_malloc()

    raws = [sent.value for sent in encode(Corpus(args.seed, gap=50).take(args.posts), "mb")]
    triager = Triager(
        max_text_chars=10_000,
        model="tiny",
        adapter_for=lambda _t: None,
        policies=load_registry(None),
    )
    items = [triager.triage(raw) for raw in raws]
    settings = Settings()
    telemetry.setup(settings, "triage")  # as the processes run: SDK installed, no exporter
    verdicts = [standin_verdict(item.content_key, "tiny") for item in items]
    decisions = decisions_of(items, verdicts)
    requests = [score_request(item, near_duplicates=True) for item in items]
    signals = [neardup.signal(item.text) for item in items]
    batches = [signals[n : n + 500] for n in range(0, len(signals), 500)]
    n = len(raws)

    parts: dict[str, Callable[[], object]] = {
        "parse (Post.from_json)": lambda: [Post.from_json(raw) for raw in raws],
        "triage (parse+normalise+key)": lambda: [triager.triage(raw) for raw in raws],
        "normalise": lambda: [normalise(item.post.text) for item in items],
        "score_request build": lambda: [score_request(i, near_duplicates=True) for i in items],
        "score_request to_json": lambda: [r.to_json() for r in requests],
        "score_request_json (sent)": lambda: [
            score_request_json(i, near_duplicates=True) for i in items
        ],
        "signal": lambda: [neardup.signal(item.text) for item in items],
        "fingerprints (500/batch)": lambda: [neardup.fingerprints(b) for b in batches],
        "decide (a cache hit)": lambda: decisions_of(items, verdicts),
        "decision sent (emitter, flush)": lambda: send_decisions(settings, decisions),
    }
    for name, work in parts.items():
        print(f"{name:32s} {best_us(work, n, args.repeat):7.2f} µs/post")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
