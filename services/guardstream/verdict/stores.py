"""What both consumers consult besides Kafka, opened once per process.

The policy packs are loaded first, so a bad pack stops the process before it connects to
anything; the Redis-backed stores are optimisations that fail open (`runtime/redisstore.py`).
The adapter registry and the policy directory are re-read in the background while the process
runs (`watch`).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass

from guardstream.model.adapters import AdapterRegistry
from guardstream.policy import PackReloader, PolicyRegistry, load_watched
from guardstream.runtime.settings import Settings
from guardstream.verdict.author_history import AuthorHistoryStore, RedisAuthorHistory
from guardstream.verdict.cache import RedisVerdictCache, VerdictCache
from guardstream.verdict.journal import DecisionJournal, RedisDecisionJournal
from guardstream.verdict.neardup import NearDuplicateIndex, RedisNearDuplicateIndex


@dataclass(frozen=True, slots=True)
class Stores:
    cache: VerdictCache
    journal: DecisionJournal
    near: NearDuplicateIndex | None  # None: near-duplicate reuse switched off
    policies: PolicyRegistry
    adapters: AdapterRegistry | None = None  # None: no LoRA adapters (the base model serves)
    # None: no pack's rules read author history and the packs cannot change, so none is kept.
    history: AuthorHistoryStore | None = None
    reloader: PackReloader | None = None  # None: the packs in force never change

    @classmethod
    def open(cls, settings: Settings, stack: AsyncExitStack, *, process: str) -> Stores:
        """Open every store; `stack` closes them when the process stops."""
        policies, reloader = load_watched(
            settings.policy.dir, process=process, poll_s=settings.policy.poll_s
        )
        cache = RedisVerdictCache.for_packs(settings, (p.cache_ttl_s for p in policies.packs))
        stack.push_async_callback(cache.close)
        journal = RedisDecisionJournal.from_settings(settings)
        stack.push_async_callback(journal.close)
        near = None
        if settings.policy.near_duplicates:
            near = RedisNearDuplicateIndex.from_settings(settings)
            stack.push_async_callback(near.close)
        adapters = (
            AdapterRegistry(settings.model.adapter_dir, settings.model.adapter_poll_s)
            if settings.model.adapter_dir is not None
            else None
        )
        history = None
        # A reloaded pack may start reading author history, so a watched directory keeps it.
        if reloader is not None or any(pack.uses_author_history for pack in policies.packs):
            history = RedisAuthorHistory.from_settings(settings)
            stack.push_async_callback(history.close)
        return cls(cache, journal, near, policies, adapters, history, reloader)

    def watch(self, stack: AsyncExitStack) -> None:
        """Re-read the adapter registry and the policy directory every poll in the background
        until `stack` closes, so the process takes a promotion or a pack change without a
        restart or a request asking for it; `gauges` says which registry and how many pack
        reloads it serves from."""
        if self.reloader is not None:
            self.reloader.watch_in(stack)
        if self.adapters is None:
            return
        done = asyncio.Event()
        watching = asyncio.create_task(self.adapters.watch(done))

        async def stop_watching() -> None:
            done.set()
            await watching

        stack.push_async_callback(stop_watching)

    def gauges(self) -> dict[str, int]:
        """What `/healthz` reports of the stores: the adapter registry generation served, and
        how many policy reloads were taken."""
        shown = {} if self.reloader is None else self.reloader.status()
        if self.adapters is not None:
            shown["adapter_generation"] = self.adapters.generation
        return shown
