"""Triage's per-post CPU by part, in process, over a batch of `bench/pipeline.py`'s posts.

No broker, no Redis: each part of what triage does for a post is timed alone over the same
generated batch (best of `--repeat`), in µs per post. A micro-benchmark to compare builds
of one part; `bench/pipeline.py` measures the whole process.

    python bench/triage_parts.py --posts 5000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from bench.pipeline import Corpus, encode

from guardstream.core import neardup
from guardstream.core.contracts import Post
from guardstream.policy import load_registry
from guardstream.triage.logic import Triager, score_request, score_request_json


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

    raws = [sent.value for sent in encode(Corpus(args.seed, gap=50).take(args.posts), "mb")]
    triager = Triager(
        max_text_chars=10_000,
        model="tiny",
        adapter_for=lambda _t: None,
        policies=load_registry(None),
    )
    items = [triager.triage(raw) for raw in raws]
    requests = [score_request(item, near_duplicates=True) for item in items]
    signals = [neardup.signal(item.text) for item in items]
    batches = [signals[n : n + 500] for n in range(0, len(signals), 500)]
    n = len(raws)

    parts: dict[str, Callable[[], object]] = {
        "parse (Post.from_json)": lambda: [Post.from_json(raw) for raw in raws],
        "triage (parse+normalise+key)": lambda: [triager.triage(raw) for raw in raws],
        "score_request build": lambda: [score_request(i, near_duplicates=True) for i in items],
        "score_request to_json": lambda: [r.to_json() for r in requests],
        "score_request_json (sent)": lambda: [
            score_request_json(i, near_duplicates=True) for i in items
        ],
        "signal": lambda: [neardup.signal(item.text) for item in items],
        "fingerprints (500/batch)": lambda: [neardup.fingerprints(b) for b in batches],
    }
    for name, work in parts.items():
        print(f"{name:32s} {best_us(work, n, args.repeat):7.2f} µs/post")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
