"""The latest decision of each post: a read model of the action topics, for `GET
/v1/decisions/{post_id}`.

Every decision of every door and every later hand (a human's review, the SLA timer's
downgrade) is published to an action topic; the API process reads the three topics and keeps,
per tenant and post id, the decision produced last (`produced_at`; a replayed decision keeps
its bytes, so it never displaces a later one). One Lua call per batch compares and sets, so
two indexers agree. Entries expire with `GUARDSTREAM_JOURNAL_TTL_S`. Unlike the cache, a
write that Redis refuses is a transient error: the batch is retried, not skipped, so the
index never silently misses a decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import Decision
from guardstream.runtime.redisstore import FailOpenStore, Unavailable, redis_client
from guardstream.runtime.settings import Settings

_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width: the strings order as the times do

# For each KEYS[i]: ARGV[2i] the decision's time, ARGV[2i + 1] the decision; ARGV[1] the TTL.
_RECORD_SCRIPT = """
for i, key in ipairs(KEYS) do
  local at = ARGV[2 * i]
  local known = redis.call('HGET', key, 'at')
  if (not known) or known <= at then
    redis.call('HSET', key, 'at', at, 'decision', ARGV[2 * i + 1])
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""


class LatestDecisions(FailOpenStore):
    def __init__(self, settings: Settings) -> None:
        client = redis_client(settings)
        super().__init__(
            client, what="latest_decisions", timeout_s=settings.redis.timeout_ms / 1000
        )
        self._prefix = settings.cache_prefix + "latest:v1:"
        self._ttl_s = settings.redis.journal_ttl_s
        self._record = client.register_script(_RECORD_SCRIPT)

    def _key(self, tenant: str, post_id: str) -> str:
        # Neither holds a control character (contracts `Tenant`, `Id`).
        return f"{self._prefix}{tenant}\x1f{post_id}"

    async def record_many(self, decisions: Sequence[Decision]) -> None:
        if not decisions:
            return
        args: list[str | bytes | int] = [self._ttl_s]
        for decision in decisions:
            args += [decision.produced_at.astimezone(UTC).strftime(_TIME), decision.to_json()]
        try:
            async with self.attempt("record_latest") as redis:
                await self._record(
                    keys=[self._key(d.tenant, d.post_id) for d in decisions],
                    args=args,
                    client=redis,
                )
        except Unavailable as exc:
            raise TransientError("the latest-decision index is unavailable") from exc

    async def get(self, tenant: str, post_id: str) -> Decision | None:
        """The post's latest decision; `Unavailable` when Redis cannot say."""
        async with self.attempt("get_latest") as redis:
            raw = await redis.hget(self._key(tenant, post_id), "decision")
        if raw is None:
            return None
        return Decision.from_json(raw.encode() if isinstance(raw, str) else raw)
