"""Erasure on request, wired for this deployment: the review store's eraser and
`erase_on_request`, which both doors call (`guardstream erase`, `POST /api/v1/admin/erasures`).

The review database goes first: it maps an author to post ids and a task to content keys, and
the console restores human verdicts into the cache from its outbox, so it must not hold them
when the cache is cleared. Then the verdict layer's stores (`verdict.erasers`). The receipt is
written to `GUARDSTREAM_ERASURE_RECEIPTS_DIR` (JSON, no text) and audited.

More stores plug in as `extra` erasers (author history: `forget(tenant, author_id)` behind an
`Eraser`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from redis.exceptions import RedisError

from guardstream.review.store import ReviewStore
from guardstream.runtime.redisstore import redis_client
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import human_verdict_key
from guardstream.verdict.erasers import verdict_erasers
from guardstream.verdict.erasure import (
    Eraser,
    Erasure,
    ErasureReceipt,
    Selector,
    StoreReceipt,
    Target,
    author_key,
    new_receipt_id,
    receipt_ids,
)

# What a store that cannot be reached raises: the request was valid, run it again (erasure and
# maintenance are idempotent).
STORE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisError,
)


class ReviewStoreEraser:
    name = "review_db"

    def __init__(self, store: ReviewStore) -> None:
        self._store = store

    async def discover(self, target: Target) -> Target:
        rows = self._store.erasure
        posts: set[str] = set()
        if target.selector.author_id is not None:
            posts = await rows.posts_of_author(
                target.tenant, author_key(target.tenant, target.selector.author_id)
            )
        keys = await rows.content_keys(target.tenant, sorted(target.post_ids | posts))
        return target.learnt(posts, keys)

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        counts = await self._store.erasure.erase(
            target.tenant,
            sorted(target.post_ids),
            [human_verdict_key(target.tenant, k) for k in sorted(target.content_keys)],
            dry_run=dry_run,
        )
        found = sum(counts.values())
        return StoreReceipt(
            store=self.name,
            found=found,
            removed=0 if dry_run else found,
            ids=receipt_ids(target.tenant, target.post_ids),
            note="rows deleted: "
            + ", ".join(f"{t} {n}" for t, n in counts.items())
            + "; audit rows kept (no text, audit retention)",
        )


def receipts_dir(settings: Settings) -> Path:
    return settings.retention.receipts_dir or settings.feedback.dir / "erasures"


async def erase_on_request(
    settings: Settings,
    store: ReviewStore,
    sel: Selector,
    *,
    dry_run: bool,
    requested_by: str,
    extra: Sequence[Eraser] = (),
) -> ErasureReceipt:
    """Erase `sel` from every store (count only with `dry_run`); the receipt, written unless
    `dry_run`."""
    receipt_id = new_receipt_id()
    client = redis_client(settings)
    try:
        erasers: list[Eraser] = [
            ReviewStoreEraser(store),
            *verdict_erasers(settings, client, receipt_id),
            *extra,
        ]
        receipt = await Erasure(erasers).run(
            sel, dry_run=dry_run, requested_by=requested_by, receipt_id=receipt_id
        )
    finally:
        await client.aclose()
    await store.audit.write(
        actor=requested_by,
        action="erase.dry_run" if dry_run else "erase",
        tenant=sel.tenant,
        detail={"receipt": receipt.receipt_id, "selector": sel.kind, "removed": receipt.removed},
    )
    if not dry_run:
        write_receipt(receipts_dir(settings), receipt)
    return receipt


def write_receipt(directory: Path, receipt: ErasureReceipt) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{receipt.receipt_id}.json"
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        out.write(receipt.model_dump_json(indent=2).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return path
