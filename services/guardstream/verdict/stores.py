"""What both consumers consult besides Kafka, opened once per process.

The policy packs are loaded first, so a bad pack stops the process before it connects to
anything; the Redis-backed stores are optimisations that fail open (`runtime/redisstore.py`).
The adapter registry is re-read in the background while the process runs (`watch_adapters`).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass

from guardstream.model.adapters import AdapterRegistry
from guardstream.policy import PolicyRegistry, load_registry
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
    # None: no pack's rules read author history, so none is kept.
    history: AuthorHistoryStore | None = None

    @classmethod
    def open(cls, settings: Settings, stack: AsyncExitStack) -> Stores:
        """Open every store; `stack` closes them when the process stops."""
        policies = load_registry(settings.policy.dir)
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
        if any(pack.uses_author_history for pack in policies.packs):
            history = RedisAuthorHistory.from_settings(settings)
            stack.push_async_callback(history.close)
        return cls(cache, journal, near, policies, adapters, history)

    def watch_adapters(self, stack: AsyncExitStack) -> None:
        """Re-read the adapter registry every poll in the background until `stack` closes, so
        the process takes a promotion without a request asking for it, and its
        `adapters.generation` says which registry it serves from."""
        if self.adapters is None:
            return
        done = asyncio.Event()
        watching = asyncio.create_task(self.adapters.watch(done))

        async def stop_watching() -> None:
            done.set()
            await watching

        stack.push_async_callback(stop_watching)

    def gauges(self) -> dict[str, int]:
        """What `/healthz` reports of the stores: the adapter registry generation served."""
        return {} if self.adapters is None else {"adapter_generation": self.adapters.generation}
