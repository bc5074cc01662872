"""What guardstream keeps per post: Redis bytes per verdict, near-duplicate entry and journal
entry, PostgreSQL bytes per review task. The capacity planner's storage unit costs.

One run against the real Redis (`REDIS_URL`, default 127.0.0.1:6379) and PostgreSQL
(`DATABASE_URL`, default postgres@127.0.0.1:5432/postgres), in a namespace and a schema of its
own, both removed afterwards. `--posts` posts of `bench/pipeline.py`'s corpus (English and
Chinese, 20-600 characters, median ~110) are triaged as triage triages them, then written by
guardstream's own stores, as the processes write them:

- the verdict cache (`RedisVerdictCache.put_many`, one model verdict per content key),
- the near-duplicate index (`RedisNearDuplicateIndex.add_many`, each text in its bands),
- the decision journal (`RedisDecisionJournal.settle_many`, one decision per post event),
- review tasks with their post texts (`TaskRows.create`, `PostRows.save`), for a
  `--review-share` of the posts (contested content).

Redis: the sum of `MEMORY USAGE` (all samples) over the keys each store wrote, divided by its
entries: exact for these keys whatever else the server holds (other tenants, other runs), and
without the server's own overhead or fragmentation (`mem_fragmentation_ratio` is printed
beside; plan with headroom). Near-duplicate buckets are shared by entries whose bands agree:
the figure is per entry at this many entries. PostgreSQL: `pg_total_relation_size` (heap,
indexes, TOAST) of `tasks` and `post_texts` after `VACUUM ANALYZE`, per task.

    .venv/bin/python bench/storage.py [--posts 20000] [--review-share 0.05]

The last line is one JSON object; `bench/results/storage-*.json` holds a committed run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import uuid
from collections.abc import Sequence
from datetime import timedelta

import orjson
import redis.asyncio as aioredis
from bench.pipeline import Corpus, encode, standin_verdict

from guardstream.contracts.events import utcnow
from guardstream.contracts.identity import PostIdentity
from guardstream.model.guard import TINY_MODEL
from guardstream.policy import load_registry
from guardstream.review.logic import task_id
from guardstream.review.store import ReviewStore
from guardstream.review.store.posts import PostText
from guardstream.review.store.tasks import NewTask
from guardstream.runtime.redisstore import redis_client
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import RedisVerdictCache
from guardstream.verdict.decisions import Origin, decide
from guardstream.verdict.intake import Triaged, Triager
from guardstream.verdict.journal import RedisDecisionJournal, journal_key
from guardstream.verdict.neardup import RedisNearDuplicateIndex


async def key_bytes(client: aioredis.Redis, pattern: str) -> tuple[int, int]:
    """(keys, bytes) of the keys matching `pattern`, `MEMORY USAGE` over all samples."""
    keys = total = 0
    async for key in client.scan_iter(match=pattern, count=5000):
        used = await client.memory_usage(key, samples=0)
        keys += 1
        total += int(used or 0)
    return keys, total


async def redis_costs(settings: Settings, items: Sequence[Triaged]) -> dict[str, object]:
    patient = settings.replace(redis={"timeout_ms": 30_000})
    cache = RedisVerdictCache.from_settings(patient)
    near = RedisNearDuplicateIndex.from_settings(patient)
    journal = RedisDecisionJournal.from_settings(patient)
    client = redis_client(settings)
    prefix = settings.cache_prefix
    try:
        verdicts = {
            item.verdict_key: standin_verdict(item.content_key, TINY_MODEL) for item in items
        }
        keys = list(verdicts)
        for n in range(0, len(keys), 2000):
            await cache.put_many({k: verdicts[k] for k in keys[n : n + 2000]})
        scopes: dict[str, list[tuple[str, str]]] = {}
        for item in items:
            scopes.setdefault(item.near_scope, []).append((item.content_key, item.text))
        for scope, entries in scopes.items():
            for n in range(0, len(entries), 1000):
                await near.add_many(scope, entries[n : n + 1000])
        decisions = {
            journal_key(item.post.tenant, item.post.event_id, item.pack.ref): decide(
                verdicts[item.verdict_key],
                Origin.MODEL,
                item.pack,
                post_id=item.post.post_id,
                post_event_id=item.post.event_id,
                tenant=item.post.tenant,
                content_key=item.content_key,
            ).to_json()
            for item in items
        }
        journal_keys = list(decisions)
        for n in range(0, len(journal_keys), 2000):
            await journal.settle_many({k: decisions[k] for k in journal_keys[n : n + 2000]})

        cache_keys, cache_bytes = await key_bytes(client, f"{prefix}verdict:*")
        near_keys, near_bytes = await key_bytes(client, f"{prefix}nd*")
        journal_count, journal_bytes = await key_bytes(client, f"{prefix}decision:*")
        info = await client.info("memory")
        return {
            "verdicts": len(verdicts),
            "verdict_keys": cache_keys,
            "bytes_per_verdict": round(cache_bytes / max(len(verdicts), 1), 1),
            "near_entries": sum(len(e) for e in scopes.values()),
            "near_keys": near_keys,
            "bytes_per_near_entry": round(near_bytes / max(len(items), 1), 1),
            "journal_entries": len(decisions),
            "journal_keys": journal_count,
            "bytes_per_journal_entry": round(journal_bytes / max(len(decisions), 1), 1),
            "redis_mem_fragmentation_ratio": info.get("mem_fragmentation_ratio"),
            "redis_version": (await client.info("server")).get("redis_version"),
        }
    finally:
        async for key in client.scan_iter(match=f"{prefix}*", count=5000):
            await client.delete(key)
        await client.aclose()
        await cache.close()
        await near.close()
        await journal.close()


async def postgres_costs(settings: Settings, items: Sequence[Triaged]) -> dict[str, object]:
    schema = f"bench_storage_{uuid.uuid4().hex[:8]}"
    store = await ReviewStore.open(settings, schema=schema)
    now = utcnow()
    try:
        tasks = [
            NewTask(
                task_id=task_id(item.post.tenant, item.post.post_id, item.pack.ref),
                identity=PostIdentity(
                    tenant=item.post.tenant,
                    post_id=item.post.post_id,
                    post_event_id=item.post.event_id,
                    policy=item.pack.ref,
                    content_key=item.content_key,
                ),
                lang=item.post.lang,
                region=item.post.region,
                decision_id=uuid.uuid4().hex,
                model_verdict="controversial",
                categories=("Politically Sensitive Topics",),
                confidence=0.71,
                reason="Qwen3Guard: Controversial [Politically Sensitive Topics]",
                model=TINY_MODEL,
                adapter=None,
                domain_tags=(),
                created_at=now,
                deadline=now + timedelta(hours=2),
                warn_at=now + timedelta(hours=1, minutes=30),
                assign_by=now + timedelta(minutes=15),
            )
            for item in items
        ]
        texts = [
            PostText(
                post_id=item.post.post_id,
                tenant=item.post.tenant,
                kind=item.post.kind.value,
                text=item.post.text,
                prompt=item.post.prompt,
                lang=item.post.lang,
                region=item.post.region,
            )
            for item in items
        ]
        for n in range(0, len(tasks), 1000):
            await store.posts.save(texts[n : n + 1000])
            await store.tasks.create(tasks[n : n + 1000])
        async with store.transaction() as tx:
            tasks_bytes = await tx.conn.fetchval("SELECT pg_total_relation_size('tasks')")
            texts_bytes = await tx.conn.fetchval("SELECT pg_total_relation_size('post_texts')")
        text_chars = sum(len(item.post.text) for item in items)
        return {
            "review_tasks": len(tasks),
            "bytes_per_review_task": round(tasks_bytes / max(len(tasks), 1), 1),
            "bytes_per_review_post_text": round(texts_bytes / max(len(tasks), 1), 1),
            "post_text_chars_mean": round(text_chars / max(len(items), 1), 1),
        }
    finally:
        async with store.transaction() as tx:
            await tx.conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--review-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    namespace = f"benchstore{uuid.uuid4().hex[:8]}"
    settings = Settings(namespace=namespace)
    raws = [sent.value for sent in encode(Corpus(args.seed, gap=50).take(args.posts), "st")]
    triager = Triager(
        max_text_chars=settings.process.max_text_chars,
        model=TINY_MODEL,
        adapter_for=lambda _t: None,
        policies=load_registry(None),
    )
    items = list({i.verdict_key: i for i in (triager.triage(raw) for raw in raws)}.values())
    contested = random.Random(args.seed).sample(items, int(len(items) * args.review_share))

    async def run() -> dict[str, object]:
        return {
            **await redis_costs(settings, items),
            **await postgres_costs(settings, contested),
        }

    found = asyncio.run(run())
    summary = {
        "bench": "storage",
        "posts": len(items),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        **found,
    }
    for name, value in summary.items():
        print(f"{name:32s} {value}", file=sys.stderr)
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
