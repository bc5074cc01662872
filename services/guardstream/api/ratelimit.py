"""The rate limit of each API key, shared by every API replica: GCRA in one Redis script.

A key of rate `r` per second and burst `b` may make `b` requests at once, then one every
`1/r` seconds; the one after that is refused with the seconds until it would be admitted
(`Retry-After`, whole seconds, at least 1). The script keeps one value per key (its
theoretical arrival time, in microseconds of Redis's own clock, so replicas' clocks never
disagree), reads and writes it atomically, and lets it expire once the key is idle.

Redis is an optimisation here as everywhere (`FailOpenStore`): when it does not answer, the
request is admitted unchecked and counted (`rate_unchecked`), never refused; the key itself
was checked against PostgreSQL all the same. `gcra` is the same rule in Python, for the
tests to hold the script to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from guardstream.api.keys import ApiKey
from guardstream.runtime.redisstore import FailOpenStore, Unavailable, redis_client
from guardstream.runtime.settings import Settings

# KEYS[1]: the key's theoretical arrival time (µs). ARGV: interval µs, burst, [now µs].
# Lua numbers are doubles: µs since the epoch (~2^51) are exact; written back with %.0f, as
# the default conversion of a number keeps 14 digits only.
_GCRA_SCRIPT = """
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if now < allowed_at then
  return {0, string.format('%.0f', allowed_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, '0'}
"""


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    retry_after_s: int = 0  # when refused: whole seconds until a request would be admitted
    checked: bool = True  # False: Redis did not answer, admitted unchecked


def interval_us(rate_per_s: float) -> int:
    """Microseconds between two requests at `rate_per_s` (at least 1)."""
    return max(1, round(1_000_000 / rate_per_s))


def retry_after_s(wait_us: int) -> int:
    return max(1, math.ceil(wait_us / 1_000_000))


def gcra(tat_us: int | None, now_us: int, interval: int, burst: int) -> tuple[int | None, int]:
    """One request under GCRA: (the new arrival time or None when refused, the µs to wait)."""
    tat = now_us if tat_us is None or tat_us < now_us else tat_us
    next_tat = tat + interval
    allowed_at = next_tat - burst * interval
    if now_us < allowed_at:
        return None, allowed_at - now_us
    return next_tat, 0


class RateLimiter(FailOpenStore):
    """Admits or refuses each request of a key, `key_rate_per_s` / `key_burst` unless the key
    names its own."""

    def __init__(self, settings: Settings) -> None:
        client = redis_client(settings)
        super().__init__(client, what="api_rate_limit", timeout_s=settings.redis.timeout_ms / 1000)
        self._prefix = settings.cache_prefix + "ratelimit:v1:"
        self._rate = settings.api.key_rate_per_s
        self._burst = settings.api.key_burst
        self._script = client.register_script(_GCRA_SCRIPT)

    def limits(self, key: ApiKey) -> tuple[float, int]:
        return (
            self._rate if key.rate_per_s is None else key.rate_per_s,
            self._burst if key.burst is None else key.burst,
        )

    async def admit(self, key: ApiKey, *, now_us: int | None = None) -> Admission:
        """`now_us` only for tests: production uses Redis's clock."""
        rate, burst = self.limits(key)
        args: list[int] = [interval_us(rate), burst]
        if now_us is not None:
            args.append(now_us)
        try:
            async with self.attempt("rate_limit") as redis:
                allowed, wait = await self._script(
                    keys=[self._prefix + key.key_id], args=args, client=redis
                )
        except Unavailable:
            return Admission(True, checked=False)
        if int(allowed):
            return Admission(True)
        return Admission(False, retry_after_s(int(wait)))
