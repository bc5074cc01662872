"""The erasers of the verdict layer's stores (`verdict.erasure.Eraser`): the verdict cache and
human overrides, the decision journal, the latest-decision index and the near-duplicate
fingerprints in Redis; the feedback archive and the curated sets beside it on disk; the adapter
registry (adapters trained on erased data are marked, their shadow runs ended); and the Kafka
topics, whose copies only their retention bounds.

Unlike the stores' own fail-open reads, an eraser lets Redis errors through: an erasure Redis
did not answer must fail, never report success.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from guardstream.contracts.feedback import FeedbackSample
from guardstream.model.adapters import EVERY_TENANT, AdapterRegistry
from guardstream.runtime.kafka import topic_retention_ms
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive, locked_part
from guardstream.verdict.author_history import forget as forget_author
from guardstream.verdict.cache import human_verdict_key
from guardstream.verdict.erasure import StoreReceipt, Target, receipt_ids

_GLOB = re.compile(r"([\\*?\[\]])")


def _literal(text: str) -> str:
    """`text` as a SCAN MATCH pattern matching only itself."""
    return _GLOB.sub(r"\\\1", text)


async def _scan(client: aioredis.Redis, pattern: str) -> AsyncIterator[bytes]:
    async for key in client.scan_iter(match=pattern, count=1000):
        yield key if isinstance(key, bytes) else str(key).encode()


async def _count_and_delete(
    redis: aioredis.Redis, names: list[str], dry_run: bool
) -> tuple[int, int]:
    """(how many of `names` exist, how many were deleted: none on a dry run)."""
    if not names:
        return 0, 0
    found = int(await redis.exists(*names))
    return found, 0 if dry_run else int(await redis.delete(*names))


class VerdictCacheEraser:
    """Model verdicts (the tenant's and the shared pool's) and human overrides of the target's
    content keys. A shared verdict is removed too: it costs other tenants one rescore."""

    name = "verdict_cache"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix + "verdict:v2:"

    async def discover(self, target: Target) -> Target:
        return target.learnt()

    def _names(self, target: Target) -> list[str]:
        names: list[str] = []
        for key in sorted(target.content_keys):
            names += [
                f"{self._prefix}m:{target.tenant}:{key}",
                f"{self._prefix}m:*:{key}",
                self._prefix + "h:" + human_verdict_key(target.tenant, key),
            ]
        return names

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        names = self._names(target)
        found, removed = await _count_and_delete(self._redis, names, dry_run)
        return StoreReceipt(
            store=self.name,
            found=found,
            removed=removed,
            ids=receipt_ids(target.tenant, target.content_keys),
            note="model verdicts and human overrides of the posts' content keys, deleted",
        )


class JournalEraser:
    """The decision journal's entries of the target's posts (found by reading the tenant's)."""

    name = "decision_journal"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix + "decision:v2:"

    async def _entries(self, target: Target) -> list[tuple[bytes, dict[str, Any]]]:
        found: list[tuple[bytes, dict[str, Any]]] = []
        pattern = _literal(f"{self._prefix}{target.tenant}\x1f") + "*"
        async for key in _scan(self._redis, pattern):
            raw = await self._redis.get(key)
            if raw is None:
                continue
            try:
                decision = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # the journal deletes what it cannot read itself
            if isinstance(decision, dict) and decision.get("post_id") in target.post_ids:
                found.append((key, decision))
        return found

    async def discover(self, target: Target) -> Target:
        keys = {str(d["content_key"]) for _, d in await self._entries(target) if "content_key" in d}
        return target.learnt(keys=keys)

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        entries = await self._entries(target)
        removed = 0
        if entries and not dry_run:
            removed = int(await self._redis.delete(*(k for k, _ in entries)))
        return StoreReceipt(
            store=self.name,
            found=len(entries),
            removed=removed,
            ids=receipt_ids(target.tenant, (str(d.get("decision_id", "")) for _, d in entries)),
            note="journal entries deleted: a replay of the post is decided afresh",
        )


class LatestDecisionsEraser:
    """`GET /v1/decisions/{post_id}`'s read model: one hash per (tenant, post id)."""

    name = "latest_decisions"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix + "latest:v1:"

    def _key(self, tenant: str, post_id: str) -> str:
        return f"{self._prefix}{tenant}\x1f{post_id}"

    async def discover(self, target: Target) -> Target:
        keys: set[str] = set()
        for post_id in sorted(target.post_ids):
            raw = await self._redis.hget(self._key(target.tenant, post_id), "decision")
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                decision = orjson.loads(raw) if raw is not None else None
                if isinstance(decision, dict) and isinstance(decision.get("content_key"), str):
                    keys.add(decision["content_key"])
        return target.learnt(keys=keys)

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        names = [self._key(target.tenant, p) for p in sorted(target.post_ids)]
        found, removed = await _count_and_delete(self._redis, names, dry_run)
        return StoreReceipt(
            store=self.name,
            found=found,
            removed=removed,
            ids=receipt_ids(target.tenant, target.post_ids),
            note="latest decisions deleted",
        )


class NearDuplicateEraser:
    """Fingerprints of the target's content keys. Buckets are named by hashes of their scope,
    so every bucket is read; members are `content_key:fingerprint`."""

    name = "near_duplicates"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._pattern = _literal(prefix + "nd") + "*"

    async def discover(self, target: Target) -> Target:
        return target.learnt()

    async def _members(self, target: Target) -> list[tuple[bytes, bytes]]:
        if not target.content_keys:
            return []
        wanted = {k.encode() for k in target.content_keys}
        found: list[tuple[bytes, bytes]] = []
        async for bucket in _scan(self._redis, self._pattern):
            with contextlib.suppress(aioredis.ResponseError):  # not a sorted set: not ours
                async for member, _ in self._redis.zscan_iter(bucket, count=1000):
                    raw = member if isinstance(member, bytes) else str(member).encode()
                    if raw.rpartition(b":")[0] in wanted:
                        found.append((bucket, raw))
        return found

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        members = await self._members(target)
        removed = 0
        if not dry_run:
            for bucket, member in members:
                removed += int(await self._redis.zrem(bucket, member))
        return StoreReceipt(
            store=self.name,
            found=len(members),
            removed=removed,
            ids=receipt_ids(target.tenant, {m.rpartition(b":")[0].decode() for _, m in members}),
            note="fingerprints removed from their buckets",
        )


class ArchiveEraser:
    """The feedback archive (`reviews/dt=*/part-*.jsonl`): each part file holding a sample of
    the target is rewritten without it (under the file's lock, replaced atomically), never
    appended to; the curated sets beside the runs (`runs/*/held_for_senior.json`) likewise."""

    name = "feedback_archive"

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    def _parts(self) -> Iterator[Path]:
        for day in self._archive.days():
            yield from sorted(self._archive.day_dir(day).glob("part-*.jsonl"))

    def _matches(self, target: Target, line: bytes) -> FeedbackSample | None:
        try:
            sample = FeedbackSample.from_json(line)
        except ValueError:
            return None  # not ours to judge here: the archive's readers name it
        if sample.tenant == target.tenant and sample.post_id in target.post_ids:
            return sample
        return None

    def _samples(self, target: Target) -> list[FeedbackSample]:
        found: list[FeedbackSample] = []
        for path in self._parts():
            for line in path.read_bytes().splitlines():
                if line.strip() and (sample := self._matches(target, line)) is not None:
                    found.append(sample)
        return found

    async def discover(self, target: Target) -> Target:
        samples = self._samples(target)
        learnt = target.learnt(keys={s.content_key for s in samples})
        if samples:
            earliest = min(s.reviewed_at for s in samples)
            learnt = Target(learnt.selector, learnt.post_ids, learnt.content_keys, earliest)
        return learnt

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        found: list[FeedbackSample] = []
        files = 0
        for path in list(self._parts()):
            with locked_part(path) as handle:
                kept: list[bytes] = []
                dropped: list[FeedbackSample] = []
                for line in handle.read().splitlines(keepends=True):
                    sample = self._matches(target, line) if line.strip() else None
                    (kept.append(line) if sample is None else dropped.append(sample))
                if not dropped:
                    continue
                found += dropped
                files += 1
                if not dry_run:
                    _replace(path, b"".join(kept))
        curated = self._curated(target, {s.sample_id for s in found}, dry_run)
        return StoreReceipt(
            store=self.name,
            found=len(found) + curated,
            removed=0 if dry_run else len(found) + curated,
            ids=receipt_ids(target.tenant, (s.sample_id for s in found)),
            note=f"{files} archive file(s) rewritten without the samples; {curated} curated-set"
            " entries removed",
        )

    def _curated(self, target: Target, sample_ids: set[str], dry_run: bool) -> int:
        removed = 0
        runs = self._archive.root / "runs"
        for path in sorted(runs.glob("*/held_for_senior.json")) if runs.is_dir() else []:
            try:
                entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(entries, list):
                continue
            kept = [
                e for e in entries if not (isinstance(e, dict) and e.get("sample_id") in sample_ids)
            ]
            if len(kept) != len(entries):
                removed += len(entries) - len(kept)
                if not dry_run:
                    _replace(path, (json.dumps(kept, indent=2) + "\n").encode())
        return removed


def _replace(path: Path, content: bytes) -> None:
    """Write `content` beside `path` and rename it over `path` (fsynced): a reader sees the old
    file or the new one, never half of either."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class AdapterEraser:
    """Adapters of the tenant (or of every tenant) registered after the earliest erased review
    may have learnt from it: their card says so (`trained_on_erased_data`, the receipt), a
    shadow candidate among them leaves shadow, and the next feedback cycle retrains without
    waiting for new samples (`feedback.job`). Serving adapters keep serving until then."""

    name = "adapters"

    def __init__(self, registry: AdapterRegistry | None, runs: Path | None, receipt: str) -> None:
        self._registry = registry
        self._runs = runs
        self._receipt = receipt

    async def discover(self, target: Target) -> Target:
        return target.learnt()

    def tainted(self, target: Target) -> list[str]:
        if self._registry is None or target.earliest_review is None:
            return []
        snapshot = self._registry.snapshot(fresh=True)
        found = []
        for adapter_id, adapter in sorted(snapshot.adapters.items()):
            if adapter.tenant not in (target.tenant, EVERY_TENANT):
                continue
            card = self._registry.card(adapter_id)
            window = card.get("data_window")
            until = window.get("until") if isinstance(window, dict) else None
            try:
                trained_until = datetime.fromisoformat(str(until or adapter.registered_at))
            except ValueError:
                trained_until = datetime.max.replace(tzinfo=UTC)  # unknown: assume it learnt
            if trained_until.tzinfo is None:
                trained_until = trained_until.replace(tzinfo=UTC)
            if trained_until > target.earliest_review:
                found.append(adapter_id)
        return found

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        tainted = self.tainted(target)
        if tainted and not dry_run and self._registry is not None:
            snapshot = self._registry.snapshot(fresh=True)
            for adapter_id in tainted:
                card = self._registry.card(adapter_id)
                receipts = [*card.get("trained_on_erased_data", []), self._receipt]
                fields = {"trained_on_erased_data": receipts, "retrain_required": True}
                self._registry.update_card(adapter_id, fields)
                _merge_run_card(self._runs, adapter_id, fields)
                if adapter_id in snapshot.shadow.values():
                    self._registry.end_shadow(
                        adapter_id, "erased_data", "trained on data erased on request"
                    )
        note = "adapters marked retrain_required; shadow candidates among them retired"
        if self._registry is None:
            note = "no adapter registry here (GUARDSTREAM_ADAPTER_DIR unset): none marked"
        return StoreReceipt(
            store=self.name,
            found=len(tainted),
            removed=0 if dry_run else len(tainted),
            ids=tuple(sorted(tainted)),  # adapter ids name no person
            note=note,
        )


def _merge_run_card(runs: Path | None, adapter_id: str, fields: dict[str, Any]) -> None:
    path = runs / adapter_id / "model_card.json" if runs is not None else None
    if path is None or not path.is_file():
        return
    with contextlib.suppress(OSError, ValueError):
        card = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(card, dict):
            card.update(fields)
            _replace(path, (json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode())


class AuthorHistoryEraser:
    """A store that keeps per-author state (author history counters) behind its own
    `forget(tenant, author_id)`: an author's erasure calls it; a post's erasure leaves the
    author's counters (they hold no text and no post id). A dry run cannot count: found 0."""

    name = "author_history"

    def __init__(self, forget: Callable[[str, str], Awaitable[object]]) -> None:
        self._forget = forget

    async def discover(self, target: Target) -> Target:
        return target.learnt()

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        author = target.selector.author_id
        if author is None or dry_run:
            note = "per-author state: erased with the author" if author is None else "dry run"
            return StoreReceipt(store=self.name, found=0, removed=0, note=note)
        forgotten = await self._forget(target.tenant, author)
        count = forgotten if isinstance(forgotten, int) and forgotten >= 0 else 1
        return StoreReceipt(
            store=self.name,
            found=count,
            removed=count,
            ids=receipt_ids(target.tenant, [author]),
            note="the author's history forgotten",
        )


class TopicsEraser:
    """Kafka: every guardstream topic is time-retained (`cleanup.policy=delete`, none is
    compacted), so no tombstone can remove a copy; each copy of the target's records (posts,
    decisions, reviews, shadow verdicts, DLQ records) lives at most its topic's retention. The
    receipt names that bound per topic."""

    name = "kafka_topics"

    def __init__(self, settings: Settings) -> None:
        self._retention = topic_retention_ms(settings)

    async def discover(self, target: Target) -> Target:
        return target.learnt()

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        bounds = ", ".join(f"{t.value} {ms / 86_400_000:g} d" for t, ms in self._retention.items())
        return StoreReceipt(
            store=self.name,
            found=0,
            removed=0,
            note=f"no compacted topics: copies expire with their topic's retention ({bounds})",
        )


def verdict_erasers(
    settings: Settings, client: aioredis.Redis, receipt_id: str
) -> list[
    VerdictCacheEraser
    | JournalEraser
    | LatestDecisionsEraser
    | NearDuplicateEraser
    | ArchiveEraser
    | AdapterEraser
    | TopicsEraser
    | AuthorHistoryEraser
]:
    """Every verdict-layer eraser of this deployment, in the order they run."""
    prefix = settings.cache_prefix
    registry = (
        AdapterRegistry(settings.model.adapter_dir)
        if settings.model.adapter_dir is not None
        else None
    )
    archive = Archive(settings.feedback.dir)
    return [
        LatestDecisionsEraser(client, prefix),
        JournalEraser(client, prefix),
        ArchiveEraser(archive),
        VerdictCacheEraser(client, prefix),
        NearDuplicateEraser(client, prefix),
        AdapterEraser(registry, archive.root / "runs", receipt_id),
        TopicsEraser(settings),
        AuthorHistoryEraser(functools.partial(forget_author, settings)),
    ]
