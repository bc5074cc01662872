"""Scorer throughput: two-phase scoring vs plain generation on one vLLM engine, same inputs.

One run, one machine. For prefix caching ON and OFF (one engine each, started here in turn
with the scorer's own `VllmGuardEngine.start`), for each in-flight limit (`--in-flight`,
default 1,8,32,128) and each scoring mode, the same `--posts` conversations are assessed with at
most that many requests in flight in vLLM's async engine (continuous batching), starting from
a cold prefix cache each time (the cache is reset between runs, so no mode profits from
another's work). Measured per run: posts/s (posts / wall time) and p50/p99 latency of one
post (its `assess` call, rendering included). Printed: a table, the two-phase / plain ratios,
how often both modes gave the same label, and the label mix.

Inputs: the tiny checkpoint's lessons (prompt and response moderation, English and Chinese),
each post made unique by a reference number so whole prompts are never served from the
prefix cache. `--safe-share` (default 0.85, as on a real feed) of the posts are ones the
model under test calls Safe: candidates are labelled first (two-phase, label only matters)
and the corpus drawn from them, since a memorising test model does not keep its taught label
once the number is appended. The actual share is printed and recorded.

The H100 figures printed beside the result are a reference, not a measurement: the prefill
limit of Qwen3Guard-Gen 0.6B / 4B / 8B at 50% MFU on 300-token posts. The tiny checkpoint on
CPU measures the scheduling and decode structure (1 prefill vs prefill + ~12 decode steps),
not a GPU's arithmetic.

`--post-tokens N` lengthens every post to about N tokens with benign filler before its own
text (`random_qwen3.pad_post`), so throughput can be read against the 300-token reference
below; the mean prompt length actually scored is printed and recorded either way.

Real-size shapes without real weights: `--model random-0.6B|random-4B|random-8B` builds (once)
a random-weight Qwen3 of that size (`bench/random_qwen3.py`) and reports it as such. A random
model never ends its answer, so plain answers are capped at `--answer-tokens` (default 8, about
"Safety: Unsafe\nCategories: Violent" and the end-of-turn token in Qwen3's tokenizer) and
two-phase's second request at `--detail-tokens` (default 4, about "Categories: Violent" and the
end of turn): each mode decodes about as many steps as the real model would. Labels (and so
the share of posts needing a second request) are whatever the random model says, printed.

Usage: `python bench/scorer.py [--model tiny|PATH|random-SIZE] [--engine vllm|transformers]
[--posts 512] [--in-flight 1,8,32,128] [--post-tokens N]`. With `--engine transformers` (no
vLLM on the machine) "prefix caching" is that engine's shared-prefix reuse (its module doc).
The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from random_qwen3 import ensure_random_checkpoint, is_random_model, pad_post

H100_PREFILL_REFERENCE = {"0.6B": 1370, "4B": 206, "8B": 103}  # posts/s, 50% MFU, 300 tokens
MODES = ("plain", "two_phase")


@dataclass
class Run:
    caching: bool
    mode: str
    in_flight: int
    posts_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    output_tokens: int
    prompt_tokens: int
    labels: list[str | None]


@dataclass(frozen=True)
class Lengthen:
    """Pads posts to about `tokens` tokens of `tokenizer` (`tokens` 0: posts as they are)."""

    tokenizer: Any = None
    tokens: int = 0


def candidates(count: int, seed: int, lengthen: Lengthen) -> list[list[dict[str, str]]]:
    """Unique conversations: the lessons, each with a reference number appended."""
    from guardstream.model.tiny import TEACHING_SET

    rng = random.Random(seed)
    chats = []
    for number in range(count):
        chat = rng.choice(TEACHING_SET).chat()
        text = f"{chat[-1]['content']} #{number:05d}"
        if lengthen.tokens > 0:
            text = pad_post(lengthen.tokenizer, text, lengthen.tokens, rng)
        chat[-1] = {**chat[-1], "content": text}
        chats.append(chat)
    return chats


async def corpus(
    engine: Any, posts: int, safe_share: float, seed: int, lengthen: Lengthen
) -> tuple[list[list[dict[str, str]]], float]:
    """`posts` conversations of which `safe_share` are ones THIS model calls Safe.

    A memorising test model does not keep its taught label once a reference number is
    appended, so the mix is drawn from labelled candidates, not from the taught labels.
    Returns the corpus and its actual safe share (lower if too few safe candidates exist).
    Candidates are labelled `posts` at a time until both kinds suffice (a big model's
    labelling is not free).
    """
    pool = candidates(posts * 6, seed, lengthen)
    safe: list[list[dict[str, str]]] = []
    other: list[list[dict[str, str]]] = []
    target = round(posts * safe_share)
    for start in range(0, len(pool), posts):
        if len(safe) >= target and len(other) >= posts - target:
            break
        chunk = pool[start : start + posts]
        _, _, answers = await measure(engine, "two_phase", chunk, 32, f"pool-{start}")
        for chat, answer in zip(chunk, answers, strict=True):
            (safe if answer[0] == "Safe" else other).append(chat)
    want_safe = min(len(safe), target)
    chosen = safe[:want_safe] + other[: posts - want_safe]
    random.Random(seed).shuffle(chosen)
    return chosen, want_safe / len(chosen)


def cap_details(engine: Any, tokens: int) -> None:
    """Random weights: cap two-phase's second request at a real answer's remainder.

    A random model never ends its answer, so each request decodes to its cap; plain
    generation's cap is `--answer-tokens` (the settings' `max_output_tokens`), and the engines
    derive the second request's from it minus the longest forced prefix, which would leave it
    shorter than a real answer's remainder. Bench-only: reaches into the engine's sampling
    parameters.
    """
    if hasattr(engine, "_detail_params"):  # vLLM
        engine._detail_params = engine._detail_params.clone()
        engine._detail_params.max_tokens = tokens
    else:  # transformers
        engine._detail_max = tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    engine: Any, mode: str, chats: list[list[dict[str, str]]], in_flight: int, tag: str
) -> tuple[float, list[float], list[Any]]:
    from guardstream.scorer.output import parse_answer

    assess = engine.assess_plain if mode == "plain" else engine.assess_two_phase
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = [0.0] * len(chats)
    answers: list[Any] = [None] * len(chats)

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            raw = await assess(chats[index], f"{tag}-{index}")
            latencies[index] = (time.perf_counter() - started) * 1000
            answers[index] = (
                parse_answer(raw.text).label,
                raw.requests,
                raw.output_tokens,
                raw.prompt_tokens,
            )

    await engine.reset_prefix_cache()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(chats))))
    return time.perf_counter() - started, latencies, answers


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from guardstream.runtime.settings import Settings
    from guardstream.scorer.launch import start_engine

    chats: list[list[dict[str, str]]] = []
    safe_share = 0.0
    limits = [int(x) for x in args.in_flight.split(",")]
    runs: list[Run] = []
    model_id = args.model
    model, weights, extra = args.model, "guardstream tiny test checkpoint", {}
    cache_dir = args.cache_dir or Settings().model.cache_dir
    if is_random_model(args.model):
        size = args.model.removeprefix("random-")
        model = str(ensure_random_checkpoint(size, cache_dir, post_tokens=args.post_tokens))
        weights = f"random weights, Qwen3Guard-Gen-{size} shape (not the model)"
        extra = {"max_output_tokens": args.answer_tokens}
    elif args.model != "tiny":
        weights = args.model
    for caching in (True, False):
        settings = Settings(
            engine={
                "kind": args.engine,
                "max_model_len": args.max_model_len,
                "prefix_caching": caching,
                **extra,
            },
            model={"name": model, "cache_dir": cache_dir},
        )
        engine: Any = await start_engine(settings)
        lengthen = Lengthen()
        if args.post_tokens > 0:
            from transformers import AutoTokenizer

            from guardstream.model.guard import resolve_model

            path, _ = resolve_model(settings)
            lengthen = Lengthen(AutoTokenizer.from_pretrained(path), args.post_tokens)
        if is_random_model(args.model):
            cap_details(engine, args.detail_tokens)
        model_id = engine.model_id
        try:
            if not chats:  # drawn once, with the first engine: both see the same inputs
                chats, safe_share = await corpus(
                    engine, args.posts, args.safe_share, args.seed, lengthen
                )
                print(f"corpus: {len(chats)} posts, {safe_share:.0%} called Safe", flush=True)
            warm = candidates(16, args.seed + 1, lengthen)
            for mode in MODES:
                await measure(engine, mode, warm, 8, f"warm-{mode}")
            for limit in limits:
                for mode in MODES:
                    wall, lat, answers = await measure(
                        engine, mode, chats, limit, f"{caching}-{mode}-{limit}"
                    )
                    run = Run(
                        caching,
                        mode,
                        limit,
                        len(chats) / wall,
                        percentile(lat, 0.5),
                        percentile(lat, 0.99),
                        sum(a[1] for a in answers),
                        sum(a[2] for a in answers),
                        sum(a[3] for a in answers),
                        [a[0] for a in answers],
                    )
                    runs.append(run)
                    print(
                        f"prefix_caching={'on ' if caching else 'off'} {mode:9s} "
                        f"in_flight={limit:3d}  {run.posts_per_s:8.1f} posts/s  "
                        f"p50 {run.p50_ms:7.1f} ms  p99 {run.p99_ms:7.1f} ms  "
                        f"requests {run.requests}  output tokens {run.output_tokens}",
                        flush=True,
                    )
        finally:
            await engine.close()
    return summarise(args, runs, limits, model_id, safe_share, weights)


def summarise(
    args: argparse.Namespace,
    runs: list[Run],
    limits: list[int],
    model_id: str,
    safe_share: float,
    weights: str,
) -> dict[str, Any]:
    cachings = sorted({r.caching for r in runs}, reverse=True)
    best = cachings[0]  # the headline: prefix caching on where the engine has it

    def get(caching: bool, mode: str, limit: int) -> Run:
        return next(r for r in runs if (r.caching, r.mode, r.in_flight) == (caching, mode, limit))

    print("\ntwo-phase / plain throughput:")
    ratios: dict[str, float] = {}
    for caching in cachings:
        for limit in limits:
            ratio = (
                get(caching, "two_phase", limit).posts_per_s
                / get(caching, "plain", limit).posts_per_s
            )
            ratios[f"{'cached' if caching else 'uncached'}_{limit}"] = round(ratio, 2)
            print(
                f"  prefix caching {'on ' if caching else 'off'} in_flight={limit:3d}: {ratio:.2f}x"
            )
    top = max(limits)
    caching_gain = {}
    if len(cachings) == 2:
        print(f"\nprefix caching on / off (same mode, in_flight={top}):")
        for mode in MODES:
            gain = get(True, mode, top).posts_per_s / get(False, mode, top).posts_per_s
            caching_gain[mode] = round(gain, 2)
            print(f"  {mode:9s}: {gain:.2f}x")

    plain, two = get(best, "plain", top), get(best, "two_phase", top)
    same = sum(a == b for a, b in zip(plain.labels, two.labels, strict=True)) / len(plain.labels)
    mix = {str(label): two.labels.count(label) for label in sorted(set(two.labels), key=str)}
    print(f"\nlabel agreement plain vs two-phase: {same:.1%}; two-phase label mix: {mix}")
    print("\nH100 prefill limit at 50% MFU, 300-token posts (reference, not measured here):")
    for size, rate in H100_PREFILL_REFERENCE.items():
        print(f"  Qwen3Guard-Gen-{size}: ~{rate:,} posts/s")
    prompt_tokens = two.prompt_tokens / len(two.labels)
    print(
        f"measured here: {two.posts_per_s:.1f} posts/s two-phase ({weights}, {device()}), "
        f"prompts of {prompt_tokens:.0f} tokens on average"
    )
    return {
        "bench": "scorer",
        "model": model_id,
        "engine": args.engine,
        "weights": weights,
        "device": device(),
        "posts": args.posts,
        "safe_share": round(safe_share, 3),
        "prompt_tokens_mean": round(prompt_tokens, 1),
        "in_flight": top,
        "plain_posts_per_s": round(plain.posts_per_s, 1),
        "two_phase_posts_per_s": round(two.posts_per_s, 1),
        "ratio": round(two.posts_per_s / plain.posts_per_s, 2),
        "p50_ms_plain": round(plain.p50_ms, 1),
        "p99_ms_plain": round(plain.p99_ms, 1),
        "p50_ms_two_phase": round(two.p50_ms, 1),
        "p99_ms_two_phase": round(two.p99_ms, 1),
        "ratios": ratios,
        "prefix_caching_gain": caching_gain,
        "label_agreement": round(same, 4),
        "label_mix_two_phase": mix,
        "h100_prefill_reference_posts_per_s": H100_PREFILL_REFERENCE,
        "runs": [
            {
                "prefix_caching": r.caching,
                "mode": r.mode,
                "in_flight": r.in_flight,
                "posts_per_s": round(r.posts_per_s, 1),
                "p50_ms": round(r.p50_ms, 1),
                "p99_ms": round(r.p99_ms, 1),
                "requests": r.requests,
                "output_tokens": r.output_tokens,
            }
            for r in runs
        ],
    }


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    import os

    return f"cpu ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--model", default="tiny", help="`tiny`, a Qwen3Guard-Gen checkpoint, or random-SIZE"
    )
    parser.add_argument(
        "--answer-tokens", type=int, default=8, help="random-SIZE: plain answer length"
    )
    parser.add_argument(
        "--detail-tokens", type=int, default=4, help="random-SIZE: second request's length"
    )
    parser.add_argument("--engine", choices=["vllm", "transformers"], default="vllm")
    parser.add_argument("--posts", type=int, default=512)
    parser.add_argument("--in-flight", default="1,8,32,128", help="comma-separated limits")
    parser.add_argument("--safe-share", type=float, default=0.85)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--cache-dir", type=Path, default=None, help="tiny checkpoint cache")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--post-tokens", type=int, default=0, help="lengthen posts to about N tokens (0: as is)"
    )
    args = parser.parse_args()
    summary = asyncio.run(bench(args))
    print(orjson.dumps(summary).decode(), flush=True)


if __name__ == "__main__":
    main()
