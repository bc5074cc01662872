"""The decision journal: one decision per post event, re-emitted byte for byte when replayed.

A post event can arrive more than once (producer retries, a consumer crash between publishing
and committing, an operator replaying a topic). The first decision made for an event is recorded
under the event id *before* it is published; any later attempt for the same event emits the
recorded bytes instead of a new decision. Downstream therefore sees identical re-emissions,
never a second, different decision. Recording uses `SET NX GET`, so two workers racing on the
same event agree on one winner.

An event is named by its tenant, its event id and the pack deciding it: event ids are chosen
by producers, so another tenant's post carrying the same event id is another event, never a
replay of this one. (Keys live under `decision:v2:`; those written before the tenant was part
of the name, under `decision:`, are never read again and expire with `GUARDSTREAM_JOURNAL_TTL_S`.)

Like the verdict cache this is an optimisation on Redis: when Redis is unavailable the decision
is emitted as made (same verdict, fresh timestamps); the journal cannot guarantee byte identity
then, and says so in a log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import redis.asyncio as aioredis

from guardstream.runtime.redisstore import FailOpenStore, Unavailable, redis_client
from guardstream.runtime.settings import Settings


def journal_key(tenant: str, post_event_id: str, policy: str) -> str:
    # None of the three holds a control character (contracts `Tenant`, `Id`; pack refs).
    return f"{tenant}\x1f{policy}\x1f{post_event_id}"


class DecisionJournal(Protocol):
    async def recall_many(self, keys: Sequence[str]) -> dict[str, bytes]: ...

    async def settle_many(self, decisions: Mapping[str, bytes]) -> dict[str, bytes]:
        """Record each decision unless its key has one; returns what to emit per key."""
        ...

    async def close(self) -> None: ...


class RedisDecisionJournal(FailOpenStore):
    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_s: int, timeout_s: float):
        super().__init__(client, what="decision_journal", timeout_s=timeout_s)
        self._prefix = prefix + "decision:v2:"
        self._ttl_s = ttl_s
        # One round trip per batch (EVALSHA; loaded on first use and again after a flush).
        self._settle = client.register_script(_SETTLE_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisDecisionJournal:
        return cls(
            redis_client(settings),
            prefix=settings.cache_prefix,
            ttl_s=settings.redis.journal_ttl_s,
            timeout_s=settings.redis.timeout_ms / 1000,
        )

    async def recall_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        try:
            async with self.attempt("mget") as redis:
                values = await redis.mget([self._prefix + k for k in unique])
        except Unavailable:
            return {}
        return {k: _bytes(v) for k, v in zip(unique, values, strict=True) if v is not None}

    async def settle_many(self, decisions: Mapping[str, bytes]) -> dict[str, bytes]:
        settled = dict(decisions)
        if not decisions:
            return settled
        with contextlib.suppress(Unavailable):
            async with self.attempt("set_nx_get") as redis:
                earlier = await self._settle(
                    keys=[self._prefix + key for key in decisions],
                    args=[self._ttl_s, *decisions.values()],
                    client=redis,
                )
            for key, previous in zip(decisions, earlier, strict=True):
                if previous is not None:
                    settled[key] = _bytes(previous)
        return settled


# SET key value NX GET EX ttl for each KEYS[i] / ARGV[i + 1] (ARGV[1] is the TTL): each
# reply is the decision recorded earlier, or nil when ours was recorded.
_SETTLE_SCRIPT = """
local earlier = {}
for i, key in ipairs(KEYS) do
  earlier[i] = redis.call('SET', key, ARGV[i + 1], 'NX', 'GET', 'EX', ARGV[1])
end
return earlier
"""


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
