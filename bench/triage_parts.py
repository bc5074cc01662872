"""Triage's per-post CPU by part, in process, over a batch of `bench/pipeline.py`'s posts.

No broker, no Redis: each part of what triage does for a post is timed alone over the same
generated batch (best of `--repeat`), in µs per post. A micro-benchmark to compare builds
of one part; `bench/pipeline.py` measures the whole process. The decision parts hand their
records to a producer that only counts them (no broker), with the telemetry SDK installed as
in the processes (no exporter), in batches of 500 as triage's.

Posts without `lang` are triaged with language detection (`verdict.language`): its parts are
timed on the same posts with their `lang` left out. `--against DIR` compares whole triage
(parse, normalise, key, detect) with another checkout's (`DIR/services`, e.g. main before a
change): child processes of each run in turn, interleaved, and the ratio of their medians and
the median of each round's ratio are printed, for posts with `lang` and for posts without.
Times are CPU time of the measuring thread (best of `--repeat`), so that other work on a
shared machine does not count.

glibc's malloc is first set as a long-running triage process ends up on its own (where its
dynamic mmap threshold has risen: no page faults after start-up): otherwise numpy's
temporaries of a few hundred KB may each be mapped and unmapped again, and the fingerprint
part measured anywhere between 13 and 26 µs depending on what ran before it.

    python bench/triage_parts.py --posts 5000
    python bench/triage_parts.py --against /tmp/base --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
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


def best_us(
    work: Callable[[], object], count: int, repeat: int, before: Callable[[], object] = int
) -> float:
    """The least CPU time (this thread's: a machine shared with other work slows the wall
    clock, not this) one of `repeat` runs of `work` took, per item, in µs; `before` runs
    untimed ahead of each."""
    best = float("inf")
    for _ in range(repeat):
        before()
        start = time.thread_time()
        work()
        best = min(best, time.thread_time() - start)
    return best / count * 1e6


def without_lang(raws: Sequence[bytes]) -> list[bytes]:
    """The same posts as their producer would send them without `lang`."""
    out = []
    for raw in raws:
        post = orjson.loads(raw)
        post.pop("lang", None)
        out.append(orjson.dumps(post))
    return out


def triage_us(posts: int, repeat: int, seed: int) -> tuple[float, float]:
    """Whole triage (`Triager.triage`) per post: (posts with `lang`, posts without)."""
    raws = [sent.value for sent in encode(Corpus(seed, gap=50).take(posts), "mb")]
    bare = without_lang(raws)
    triager = Triager(
        max_text_chars=10_000,
        model="tiny",
        adapter_for=lambda _t: None,
        policies=load_registry(None),
    )
    triager.triage(bare[0])  # a detector is loaded on first use, not timed
    # Each pass as the first: the detector's memory of recent posts holds only the corpus's
    # own repeats (a checkout without one has nothing to forget).
    forget = getattr(getattr(triager, "languages", None), "forget", int)
    with_lang = best_us(lambda: [triager.triage(raw) for raw in raws], len(raws), repeat, forget)
    no_lang = best_us(lambda: [triager.triage(raw) for raw in bare], len(bare), repeat, forget)
    return with_lang, no_lang


def against(base: Path, args: argparse.Namespace) -> int:
    """Interleaved child processes of `base`'s triage and this checkout's; medians, ratio."""
    root = Path(__file__).resolve().parents[1]
    trees = {"base": base.resolve(), "this": root}
    extra = os.environ.get("PYTHONPATH", "")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            path = os.pathsep.join(p for p in (f"{trees[name]}/services", str(root), extra) if p)
            child = subprocess.run(
                [sys.executable, __file__, "--child", f"--posts={args.posts}",
                 f"--repeat={args.repeat}", f"--seed={args.seed}"],
                capture_output=True, text=True, check=True, env=os.environ | {"PYTHONPATH": path},
            )  # fmt: skip
            with_lang, no_lang = map(float, child.stdout.split())
            results[name].append((with_lang, no_lang))
            print(
                f"round {round_ + 1} {name:4s}  with lang {with_lang:6.2f}  without {no_lang:6.2f}"
            )
    medians = {
        name: tuple(statistics.median(r[i] for r in runs) for i in (0, 1))
        for name, runs in results.items()
    }
    for i, what in enumerate(("posts with lang", "posts without lang")):
        b, t = medians["base"][i], medians["this"][i]
        paired = statistics.median(
            base[i] / this[i] for base, this in zip(results["base"], results["this"], strict=True)
        )
        print(
            f"triage, {what:18s}: base {b:6.2f} µs/post, this {t:6.2f} µs/post (medians);"
            f" throughput this/base {b / t:.3f}, median of the rounds' ratios {paired:.3f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another checkout's root: compare triage")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (--against)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steady_malloc()
    if args.child:
        print(*triage_us(args.posts, args.repeat, args.seed))
        return 0
    if args.against is not None:
        return against(args.against, args)
    # lazy: a base checkout (--against) may predate the module
    from guardstream.verdict.language import default_detector

    raws = [sent.value for sent in encode(Corpus(args.seed, gap=50).take(args.posts), "mb")]
    bare = without_lang(raws)
    triager = Triager(
        max_text_chars=10_000,
        model="tiny",
        adapter_for=lambda _t: None,
        policies=load_registry(None),
    )
    items = [triager.triage(raw) for raw in raws]
    detector = default_detector()
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
        "triage, no lang (+detect)": lambda: [triager.triage(raw) for raw in bare],
        "detect language (no lang)": lambda: [detector.detect(item.text) for item in items],
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
        us = best_us(work, n, args.repeat, detector.forget)  # the corpus's repeats only
        print(f"{name:32s} {us:7.2f} µs/post")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
