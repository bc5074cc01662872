"""The verdict cache: content key → the verdict a model (or a human) gave that content.

Redis is an optimisation, never a dependency: every call has a deadline, and a timeout, a
connection error or an unreadable entry is a miss (the content is scored again) and is logged
once per incident, not per record. A corrupt entry is deleted so it cannot keep failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Protocol

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from guardstream.core.contracts import Confidence, Source, Timestamp, Verdict
from guardstream.core.settings import Settings

log = logging.getLogger(__name__)


class CachedVerdict(BaseModel):
    """A verdict as stored under its content key (compact; no post ids, no text)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Annotated[int, Field(ge=1)] = 1
    verdict: Verdict
    categories: tuple[str, ...] = ()
    confidence: Confidence | None = None
    refusal: bool | None = None
    reason: str
    source: Source
    model: str
    adapter: str | None = None
    decided_at: Timestamp


class VerdictCache(Protocol):
    async def get_many(self, keys: Sequence[str]) -> dict[str, CachedVerdict]: ...

    async def put_many(self, entries: Mapping[str, CachedVerdict]) -> None: ...

    async def close(self) -> None: ...


class RedisVerdictCache:
    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_s: int, timeout_s: float):
        self._redis = client
        self._prefix = prefix + "verdict:"
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._healthy = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisVerdictCache:
        timeout = settings.cache_timeout_ms / 1000
        client = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        return cls(
            client, prefix=settings.cache_prefix, ttl_s=settings.cache_ttl_s, timeout_s=timeout
        )

    def _key(self, content_key: str) -> str:
        return self._prefix + content_key

    def _degraded(self, operation: str, exc: BaseException) -> None:
        if self._healthy:
            log.warning(
                "verdict cache unavailable, scoring without it",
                extra={"operation": operation, "error": type(exc).__name__},
            )
        self._healthy = False

    def _recovered(self) -> None:
        if not self._healthy:
            log.info("verdict cache reachable again")
        self._healthy = True

    async def get_many(self, keys: Sequence[str]) -> dict[str, CachedVerdict]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self._redis.mget([self._key(k) for k in unique])
        except (RedisError, TimeoutError, OSError) as exc:
            self._degraded("mget", exc)
            return {}
        self._recovered()
        found: dict[str, CachedVerdict] = {}
        corrupt: list[str] = []
        for key, value in zip(unique, raw, strict=True):
            if value is None:
                continue
            try:
                found[key] = CachedVerdict.model_validate(orjson.loads(value))
            except (orjson.JSONDecodeError, ValidationError):
                corrupt.append(key)
        if corrupt:
            log.warning("dropping corrupt verdict cache entries", extra={"count": len(corrupt)})
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._redis.delete(*(self._key(k) for k in corrupt))
            except (RedisError, TimeoutError, OSError) as exc:
                self._degraded("delete", exc)
        return found

    async def put_many(self, entries: Mapping[str, CachedVerdict]) -> None:
        if not entries:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                pipe = self._redis.pipeline(transaction=False)
                for key, entry in entries.items():
                    pipe.set(
                        self._key(key), orjson.dumps(entry.model_dump(mode="json")), ex=self._ttl_s
                    )
                await pipe.execute()
        except (RedisError, TimeoutError, OSError) as exc:
            self._degraded("set", exc)
            return
        self._recovered()

    async def close(self) -> None:
        await self._redis.aclose()
