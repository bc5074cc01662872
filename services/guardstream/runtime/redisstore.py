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

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError, RedisError
from redis.typing import EncodableT

from guardstream.contracts.errors import TransientError
from guardstream.runtime import metrics
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)

REDIS_FAILURES = (RedisError, TimeoutError, OSError)


def redis_client(settings: Settings) -> aioredis.Redis:
    timeout = settings.redis.timeout_ms / 1000
    client = aioredis.Redis.from_url(
        settings.redis.url.get_secret_value(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    pool = client.connection_pool
    base = pool.connection_class  # plain, TLS or Unix socket, as the URL says
    pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
    return client


class HiredisPacking:
    """Commands packed by hiredis, as redis-py's synchronous client packs them.

    redis-py's asyncio connections pack every argument in Python (~0.8 µs each: triage's MGET,
    journal and near-duplicate calls pass several per post, ~5% of its CPU); hiredis writes the
    same bytes in C (~0.1 µs) - pinned by a unit test against redis-py's own packer, with the
    client's default encoding (UTF-8, strict), which `redis_client` keeps. A connection mixin:
    `pack_commands` (pipelines) calls `pack_command` too.
    """

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        if isinstance(args[0], str):  # a command name may hold literal arguments: "CONFIG GET"
            args = (*args[0].encode().split(), *args[1:])
        elif isinstance(args[0], bytes) and b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [
                hiredis.pack_command(
                    tuple(  # type: ignore[arg-type]  # hiredis's stub says a 1-tuple
                        bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args
                    )
                )
            ]
        except TypeError as exc:  # what redis-py's encoder raises for a bool, None, ...
            raise DataError(str(exc)) from exc


class Unavailable(TransientError):
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
