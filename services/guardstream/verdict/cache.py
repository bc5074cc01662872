"""The verdict cache: content key → the verdict a model (or a human) gave that content.

Redis is an optimisation, never a dependency (`FailOpenStore`): a timeout, a connection error
or an unreadable entry is a miss and the content is scored again. A corrupt entry is deleted
so it cannot keep failing.

Lifetimes: an entry is written to live as long as the longest `cache_ttl_s` of the policy
packs in force, capped by `GUARDSTREAM_CACHE_TTL_S` (`for_packs`); each pack then reuses only
verdicts younger than its own `cache_ttl_s` (`CachedVerdict.fresh_for`).

Tenants: every entry is looked up by a `VerdictKey`, the content key *and* the post's tenant.
A model verdict is the tenant's own unless the post's pack says `share_model_verdicts: true`
(default false: a hit on another tenant's verdict would tell this tenant that the other one
saw the same text); shared ones live in one pool that only sharing packs read and write.
Human verdicts (the review console) are always the tenant's own: their reason is a
reviewer's words about that tenant's post.

Human verdicts live beside the model's under `verdict:v2:h:<tenant>:<key>` with their own,
longer TTL (`GUARDSTREAM_HUMAN_VERDICT_TTL_S`); a lookup prefers them (sticky override), and
model writes and `forget_many` never touch them. Model verdicts live under
`verdict:v2:m:<tenant>:<key>`, or `verdict:v2:m:*:<key>` when shared (`*` is no tenant name).
The keys before `v2` (`verdict:<key>`, `verdict:human:<key>`) are never read again and expire
with their TTL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, NamedTuple, Protocol

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardstream.contracts.events import Confidence, Source, Timestamp, Verdict
from guardstream.runtime.redisstore import FailOpenStore, Unavailable, redis_client
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)


class CachedVerdict(BaseModel):
    """A verdict as stored under its content key (compact; no post ids, no text)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Annotated[int, Field(ge=1)] = 1
    verdict: Verdict
    categories: tuple[str, ...] = ()
    confidence: Confidence | None = None
    refusal: bool | None = None
    input_truncated: bool = False  # the model judged a shortened text (see `Decision`)
    reason: str
    source: Source
    model: str
    adapter: str | None = None
    decided_at: Timestamp

    def fresh_for(self, max_age_s: int, now: datetime) -> bool:
        """Young enough to reuse under a pack whose `cache_ttl_s` is `max_age_s`. A human
        verdict is sticky: it overrides model verdicts for its content however old it is."""
        return self.source is Source.HUMAN or now - self.decided_at < timedelta(seconds=max_age_s)


class VerdictKey(NamedTuple):
    """Where one post's verdict is kept: its content key, within its tenant."""

    content_key: str
    tenant: str
    shared: bool = False  # the post's pack shares model verdicts between tenants


_SHARED = "*"  # the model scope of sharing packs: not a tenant name (`contracts.Tenant`)


def human_verdict_key(tenant: str, content_key: str) -> str:
    """The name of a human verdict (what the review outbox queues it under); unambiguous: a
    tenant name holds no colon."""
    return f"{tenant}:{content_key}"


class VerdictCache(Protocol):
    async def get_many(self, keys: Sequence[VerdictKey]) -> dict[VerdictKey, CachedVerdict]:
        """The verdict per key found: the tenant's human verdict if there is one, else the
        model's in the key's scope."""
        ...

    async def put_many(self, entries: Mapping[VerdictKey, CachedVerdict]) -> None: ...

    async def forget_many(self, keys: Sequence[VerdictKey]) -> None:
        """Drop entries (too old for a pack that found them): the next lookup is a miss."""
        ...

    async def close(self) -> None: ...


class RedisVerdictCache(FailOpenStore):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: int,
        timeout_s: float,
        human_ttl_s: int | None = None,
    ):
        super().__init__(client, what="verdict_cache", timeout_s=timeout_s)
        self._prefix = prefix + "verdict:v2:"
        self._ttl_s = ttl_s
        self._human_ttl_s = human_ttl_s or ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisVerdictCache:
        return cls(
            redis_client(settings),
            prefix=settings.cache_prefix,
            ttl_s=settings.redis.cache_ttl_s,
            timeout_s=settings.redis.timeout_ms / 1000,
            human_ttl_s=settings.review.human_verdict_ttl_s,
        )

    @classmethod
    def for_packs(cls, settings: Settings, pack_ttls_s: Iterable[int]) -> RedisVerdictCache:
        """Entries live as long as the longest-lived pack reuses them, at most the setting."""
        ttl_s = min(
            settings.redis.cache_ttl_s, max(pack_ttls_s, default=settings.redis.cache_ttl_s)
        )
        return cls(
            redis_client(settings),
            prefix=settings.cache_prefix,
            ttl_s=ttl_s,
            timeout_s=settings.redis.timeout_ms / 1000,
            human_ttl_s=settings.review.human_verdict_ttl_s,
        )

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def _key(self, key: VerdictKey) -> str:
        scope = _SHARED if key.shared else key.tenant
        return f"{self._prefix}m:{scope}:{key.content_key}"

    def _human_key(self, key: VerdictKey) -> str:
        return self._prefix + "h:" + human_verdict_key(key.tenant, key.content_key)

    async def get_many(self, keys: Sequence[VerdictKey]) -> dict[VerdictKey, CachedVerdict]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        # Model entries first, human ones after: a human verdict replaces the model's.
        names = [self._key(k) for k in unique] + [self._human_key(k) for k in unique]
        try:
            async with self.attempt("mget") as redis:
                raw = await redis.mget(names)
        except Unavailable:
            return {}
        found: dict[VerdictKey, CachedVerdict] = {}
        corrupt: list[str] = []
        for key, name, value in zip(unique + unique, names, raw, strict=True):
            if value is None:
                continue
            try:
                found[key] = CachedVerdict.model_validate(orjson.loads(value))
            except (orjson.JSONDecodeError, ValidationError):
                corrupt.append(name)
        if corrupt:
            log.warning("dropping corrupt verdict cache entries", extra={"count": len(corrupt)})
            with contextlib.suppress(Unavailable):
                async with self.attempt("delete") as redis:
                    await redis.delete(*corrupt)
        return found

    async def put_human(self, key: str, entry: CachedVerdict) -> None:
        """Store a reviewer's verdict under `key` (`human_verdict_key(tenant, content_key)`:
        sticky, for that tenant only). Unlike model writes this raises `Unavailable`: the
        review console retries it until it lands."""
        value = orjson.dumps(entry.model_dump(mode="json"))
        async with self.attempt("set") as redis:
            await redis.set(self._prefix + "h:" + key, value, ex=self._human_ttl_s)

    def _human_marker(self) -> str:
        return self._prefix + "human-marker"

    async def human_verdicts_present(self) -> bool:
        """False when Redis lost the human verdicts (flushed, failed over to an empty
        replica): the review console then writes them again from its store. Raises
        `Unavailable` when Redis does not answer (nothing to conclude)."""
        async with self.attempt("exists") as redis:
            return bool(await redis.exists(self._human_marker()))

    async def mark_human_verdicts_present(self) -> None:
        async with self.attempt("set") as redis:
            await redis.set(self._human_marker(), b"1")

    async def forget_many(self, keys: Sequence[VerdictKey]) -> None:
        if not keys:
            return
        with contextlib.suppress(Unavailable):
            async with self.attempt("delete") as redis:
                await redis.delete(*(self._key(k) for k in keys))

    async def put_many(self, entries: Mapping[VerdictKey, CachedVerdict]) -> None:
        if not entries:
            return
        with contextlib.suppress(Unavailable):
            async with self.attempt("set") as redis:
                pipe = redis.pipeline(transaction=False)
                for key, entry in entries.items():
                    value = orjson.dumps(entry.model_dump(mode="json"))
                    pipe.set(self._key(key), value, ex=self._ttl_s)
                await pipe.execute()
