"""What every Redis-backed store of guardstream shares: Redis is an optimisation.

Each call runs under a deadline; a timeout, a connection error or a Redis error is reported to
the caller as "no answer" (a miss, a no-op) and logged once per incident, not once per record.
Nothing in the pipeline may stop because Redis is down, slow or flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardstream.core import metrics
from guardstream.core.settings import Settings

log = logging.getLogger(__name__)

REDIS_FAILURES = (RedisError, TimeoutError, OSError)


def redis_client(settings: Settings) -> aioredis.Redis:
    timeout = settings.cache_timeout_ms / 1000
    return aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class Unavailable(Exception):
    """Raised inside `FailOpenStore.attempt` blocks when Redis did not answer in time."""


class FailOpenStore:
    def __init__(self, client: aioredis.Redis, *, what: str, timeout_s: float) -> None:
        self._redis = client
        self._what = what
        self._timeout_s = timeout_s
        self._healthy = True
        metrics.gauges.set("guardstream.redis.available", 1, store=what)

    @asynccontextmanager
    async def attempt(self, operation: str) -> AsyncIterator[aioredis.Redis]:
        """Run a block against Redis under the deadline; failures become `Unavailable`."""
        try:
            async with asyncio.timeout(self._timeout_s):
                yield self._redis
        except REDIS_FAILURES as exc:
            if self._healthy:
                log.warning(
                    "redis unavailable, continuing without it",
                    extra={
                        "store": self._what,
                        "operation": operation,
                        "error": type(exc).__name__,
                    },
                )
            self._healthy = False
            metrics.redis_failures.add(1, {"store": self._what, "operation": operation})
            metrics.gauges.set("guardstream.redis.available", 0, store=self._what)
            raise Unavailable(operation) from exc
        if not self._healthy:
            log.info("redis reachable again", extra={"store": self._what})
            metrics.gauges.set("guardstream.redis.available", 1, store=self._what)
        self._healthy = True

    async def close(self) -> None:
        await self._redis.aclose()
