"""Author history: per tenant and author, how many recent decisions were unsafe, controversial
or confirmed unsafe by a person, in sliding windows of 1, 7 and 30 days.

Pack rules read it (`policy.rules`: "3 confirmed unsafe in 7 days → remove"). Each kind is a
Redis sorted set per (tenant, hashed author): member = the decision's id (a replayed decision
is counted once), score = when it was decided. A window counts the members younger than it,
so an entry decays out of the 1-day figure after a day and out of every figure after 30 days,
when it is trimmed; every key expires 30 days after its last write. A person overturning the
model (a review that is not unsafe) takes the model's entry for that decision out again.

Author ids never appear in keys or logs: keys hold a hash of tenant and author, and a second
key per decision (`post:`) remembers that hash, so a review, which knows the tenant and the
decision but not the author, finds the author's sets. Another tenant's author with the same id
has other keys. Fail open like every Redis store: unread history is None (rules that need it
do not fire), an unrecorded decision is logged and counted, never retried into a crash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import redis.asyncio as aioredis

from guardstream.contracts.events import AuthorHistory, Decision, Source, Verdict
from guardstream.runtime.redisstore import FailOpenStore, Unavailable, redis_client
from guardstream.runtime.settings import Settings
from guardstream.verdict.erasure import author_key

DAY_S: Final = 86400
WINDOWS: Final = (("1d", DAY_S), ("7d", 7 * DAY_S), ("30d", 30 * DAY_S))
KEEP_S: Final = 30 * DAY_S  # the longest window: nothing older is ever counted
KINDS: Final = ("unsafe", "controversial", "confirmed_unsafe")


@dataclass(frozen=True, slots=True)
class Authored:
    """A decision and the author of its post."""

    author_id: str
    decision: Decision


def model_kind(decision: Decision) -> str | None:
    """Which figure a decision counts in: a human verdict reused for this content counts as
    confirmed; decisions no model or person judged (source `rule`, `sla_timeout`) count in none."""
    if decision.source is Source.HUMAN or (
        decision.source is Source.CACHE and decision.rule == "human_verdict"
    ):
        return "confirmed_unsafe" if decision.verdict is Verdict.UNSAFE else None
    if decision.source not in (Source.MODEL, Source.CACHE):
        return None
    if decision.verdict is Verdict.UNSAFE:
        return "unsafe"
    if decision.verdict is Verdict.CONTROVERSIAL:
        return "controversial"
    return None


class AuthorHistoryStore(Protocol):
    async def figures_many(
        self, authors: Sequence[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], AuthorHistory]:
        """(tenant, author_id) → figures as of `now` (epoch s); absent: not readable now."""
        ...

    async def record(self, decisions: Sequence[Authored]) -> None:
        """Count each decision for its author (once per decision id, however often)."""
        ...

    async def record_review(
        self, tenant: str, decision_id: str, verdict: Verdict, at: datetime
    ) -> None:
        """A person's verdict on the post `decision_id` decided: unsafe confirms it; anything
        else takes the model's entry for it back out."""
        ...

    async def figures_for_decision(
        self, tenant: str, decision_id: str, now: float
    ) -> AuthorHistory | None:
        """The figures of the author of the post `decision_id` decided (the console's)."""
        ...

    async def forget(self, tenant: str, author_id: str) -> int:
        """Erase the author's history in `tenant`; returns how many keys went."""
        ...

    async def close(self) -> None: ...


class RedisAuthorHistory(FailOpenStore):
    def __init__(self, client: aioredis.Redis, *, prefix: str, timeout_s: float) -> None:
        super().__init__(client, what="author_history", timeout_s=timeout_s)
        self._prefix = prefix + "author:v1:"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisAuthorHistory:
        return cls(
            redis_client(settings),
            prefix=settings.cache_prefix,
            timeout_s=settings.redis.timeout_ms / 1000,
        )

    def _key(self, tenant: str, hashed: str, kind: str) -> str:
        return f"{self._prefix}{tenant}:{hashed}:{kind}"

    def _post_key(self, tenant: str, decision_id: str) -> str:
        digest = hashlib.sha256(decision_id.encode()).hexdigest()[:32]
        return f"{self._prefix}{tenant}:post:{digest}"

    async def figures_many(
        self, authors: Sequence[tuple[str, str]], now: float
    ) -> dict[tuple[str, str], AuthorHistory]:
        unique = list(dict.fromkeys(authors))
        if not unique:
            return {}
        try:
            async with self.attempt("zcount") as redis:
                pipe = redis.pipeline(transaction=False)
                for tenant, author in unique:
                    self._queue_counts(pipe, tenant, author_key(tenant, author), now)
                counts = await pipe.execute()
        except Unavailable:
            return {}
        per = len(KINDS) * len(WINDOWS)
        return {who: _figures(counts[n * per : (n + 1) * per]) for n, who in enumerate(unique)}

    def _queue_counts(self, pipe: object, tenant: str, hashed: str, now: float) -> None:
        for kind in KINDS:
            for _, seconds in WINDOWS:
                pipe.zcount(self._key(tenant, hashed, kind), f"({now - seconds}", "+inf")  # type: ignore[attr-defined]

    async def record(self, decisions: Sequence[Authored]) -> None:
        counted = [(a, kind) for a in decisions if (kind := model_kind(a.decision)) is not None]
        if not counted:
            return
        try:
            async with self.attempt("zadd") as redis:
                pipe = redis.pipeline(transaction=False)
                for authored, kind in counted:
                    d = authored.decision
                    hashed = author_key(d.tenant, authored.author_id)
                    key = self._key(d.tenant, hashed, kind)
                    at = d.decided_at.timestamp()
                    pipe.zadd(key, {d.decision_id: at}, nx=True)
                    pipe.zremrangebyscore(key, "-inf", f"({at - KEEP_S}")
                    pipe.expire(key, KEEP_S + DAY_S)
                    pipe.set(self._post_key(d.tenant, d.decision_id), hashed, ex=KEEP_S + DAY_S)
                await pipe.execute()
        except Unavailable:
            return

    async def record_review(
        self, tenant: str, decision_id: str, verdict: Verdict, at: datetime
    ) -> None:
        try:
            async with self.attempt("review") as redis:
                found = await redis.get(self._post_key(tenant, decision_id))
                if found is None:  # decided before history was kept, or forgotten
                    return
                hashed = found.decode() if isinstance(found, bytes) else str(found)
                pipe = redis.pipeline(transaction=False)
                confirmed = self._key(tenant, hashed, "confirmed_unsafe")
                if verdict is Verdict.UNSAFE:
                    pipe.zadd(confirmed, {decision_id: at.timestamp()}, nx=True)
                    pipe.expire(confirmed, KEEP_S + DAY_S)
                else:  # the person overturned the model: its call no longer counts
                    for kind in KINDS:
                        pipe.zrem(self._key(tenant, hashed, kind), decision_id)
                await pipe.execute()
        except Unavailable:
            return

    async def figures_for_decision(
        self, tenant: str, decision_id: str, now: float
    ) -> AuthorHistory | None:
        try:
            async with self.attempt("figures") as redis:
                found = await redis.get(self._post_key(tenant, decision_id))
                if found is None:
                    return None
                hashed = found.decode() if isinstance(found, bytes) else str(found)
                pipe = redis.pipeline(transaction=False)
                self._queue_counts(pipe, tenant, hashed, now)
                return _figures(await pipe.execute())
        except Unavailable:
            return None

    async def forget(self, tenant: str, author_id: str) -> int:
        """Erase the author's figures in `tenant`. Raises `Unavailable` when Redis does not
        answer: an erasure must be retried, not assumed. The per-decision `post:` keys hold
        only the hash and expire within 31 days; without the sets they count nothing."""
        hashed = author_key(tenant, author_id)
        async with self.attempt("forget") as redis:
            deleted = await redis.delete(*(self._key(tenant, hashed, kind) for kind in KINDS))
        return int(deleted)


def _figures(counts: Sequence[object]) -> AuthorHistory:
    fields: dict[str, int] = {}
    n = 0
    for kind in KINDS:
        for window, _ in WINDOWS:
            fields[f"{kind}_{window}"] = int(counts[n])  # type: ignore[call-overload]
            n += 1
    return AuthorHistory(**fields)


async def forget(settings: Settings, tenant: str, author_id: str) -> int:
    """Erase one author's history in `tenant` (for erasure requests): opens the store, calls
    `RedisAuthorHistory.forget`, closes it. Raises `Unavailable` when Redis does not answer."""
    store = RedisAuthorHistory.from_settings(settings)
    try:
        return await store.forget(tenant, author_id)
    finally:
        await store.close()
