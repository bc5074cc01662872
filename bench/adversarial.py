"""The adversarial corpus report: per attack family, was the prompt's structure preserved and
what did the model decide?

Runs `services/guardstream/devtools/corpus/adversarial-v3.jsonl` (or `--corpus`) through the
real pipeline in this process: triage and the scorer through their entry points, a real
Kafka-protocol broker (a memory-only tansu started here unless `KAFKA_BOOTSTRAP` is set), the
real Redis (`REDIS_URL`) and the vLLM engine serving `GUARDSTREAM_MODEL` (default `tiny`, the
project's test checkpoint, whose verdicts on text it was not taught are noise: on it the
verdict columns show the plumbing, on real Qwen3Guard weights they show the model). Everything
lives in a fresh namespace; its Redis keys are deleted at the end.

Prints a table (one row per family: count, structure preserved, invisible characters removed,
head and tail kept, disguises folded, exactly one decision, verdicts), the entries that failed a
check, and as its last line one JSON object. Exit status 1 when any check failed.

    python bench/adversarial.py [--corpus PATH] [--max-model-len 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import redis

from guardstream.devtools.adversarial import (
    CORPUS_LATEST,
    assess,
    load_corpus,
    load_tokenizer,
    render_budget,
    render_table,
    run_corpus,
    summarise,
)
from guardstream.devtools.stack import port_open, tansu_command
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def report(settings: Settings, corpus_path: Path) -> tuple[str, dict[str, object]]:
    corpus = load_corpus(corpus_path)
    engine = await VllmGuardEngine.start(settings)
    try:
        started = time.monotonic()
        outcomes = await run_corpus(settings, engine, corpus)
        elapsed = time.monotonic() - started
    finally:
        await engine.close()
    assess(outcomes, load_tokenizer(settings), render_budget(settings))
    summary = summarise(corpus, outcomes, engine.model_id)
    lines = [render_table(summary)]
    for o in outcomes:
        if o.problems:
            lines.append(f"  {o.attack.id}: {'; '.join(o.problems)}")
    summary["seconds"] = round(elapsed, 1)
    return "\n".join(lines), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS_LATEST)
    parser.add_argument("--max-model-len", type=int, default=None)
    args = parser.parse_args()

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        port = free_port()
        broker = subprocess.Popen(
            tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        bootstrap = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
    settings = Settings(
        namespace=f"adv{uuid.uuid4().hex[:10]}",
        kafka={"bootstrap": bootstrap},
        policy={"near_duplicates": False},
        model={"name": os.environ.get("GUARDSTREAM_MODEL", "tiny")},
    )
    if args.max_model_len:
        settings = settings.replace(engine={"max_model_len": args.max_model_len})
    try:
        table, summary = asyncio.run(report(settings, args.corpus))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
        client = redis.Redis.from_url(settings.redis.url.get_secret_value())
        keys = list(client.scan_iter(f"{settings.cache_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    print(table)
    print(orjson.dumps(summary).decode())
    return 0 if summary["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
