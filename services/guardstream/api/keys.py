"""API keys of tenants: how a key looks, how it is stored, and how a request's key is checked.

A key reads `gsk_<key_id>_<secret>`: `key_id` is 16 hex digits, public (logs, `list-keys`,
`revoke-key`); the secret is 256 random bits (64 hex digits), shown once by `add-key`. The
`api_keys` table (`api/migrations/0001_api_keys.sql`) keeps only the SHA-256 of the whole key:
a key of 256 random bits needs no slow hash (as the review API's tokens).

`KeyRing` checks a presented key against the table through a short in-process cache of what
it read per key id, for `GUARDSTREAM_API_KEY_CACHE_S` (5 s by default), unknown ids included
(a flood of made-up keys costs the database one read per id and window). So a revocation takes
effect on every replica within that many seconds; a new key works at once (an id never seen
is read, and a cached "unknown" is for an id nobody held then). Concurrent checks of one id
share one read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg
from pydantic import TypeAdapter, ValidationError

from guardstream.contracts.errors import PermanentError, TransientError
from guardstream.contracts.events import Tenant
from guardstream.runtime.postgres import DB_ERRORS, Rows

KEY_PREFIX = "gsk_"
_KEY = re.compile(r"gsk_([0-9a-f]{16})_([0-9a-f]{64})")
KEY_ID = re.compile(r"[0-9a-f]{16}")
MAX_NAME_CHARS = 100
MAX_RATE_PER_S = 1_000_000.0
MAX_BURST = 1_000_000
# Longer than any key with its scheme; a longer header is refused unread.
MAX_AUTHORIZATION_CHARS = 256

_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)


class KeyRequestInvalid(PermanentError, ValueError):
    """A key asked for with values the store refuses (tenant, name, rate, burst)."""


class KeyStoreUnavailable(TransientError):
    """The database did not answer for a key not in the cache: the request is answered 503
    with Retry-After (neither accepted nor refused)."""


def new_key() -> tuple[str, str]:
    """A new key id and the key that carries it."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_hex(32)}"


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    found = _KEY.fullmatch(key)
    return found.group(1) if found else None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header, else None."""
    if authorization is None or len(authorization) > MAX_AUTHORIZATION_CHARS:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def checked_tenant(tenant: str) -> str:
    try:
        return _TENANT.validate_python(tenant)
    except ValidationError:
        raise KeyRequestInvalid(
            "a tenant is 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit"
        ) from None


def checked_name(name: str) -> str:
    try:
        name.encode()
    except UnicodeEncodeError:
        name = "\0"  # a lone surrogate: refused like any unprintable character
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise KeyRequestInvalid(f"a key's name is at most {MAX_NAME_CHARS} printable characters")
    return name


def checked_rate(rate_per_s: float | None, burst: int | None) -> None:
    if rate_per_s is not None and not (
        math.isfinite(rate_per_s) and 0 < rate_per_s <= MAX_RATE_PER_S
    ):
        raise KeyRequestInvalid(
            f"a rate is a number of requests per second in (0, {MAX_RATE_PER_S:g}]"
        )
    if burst is not None and not 1 <= burst <= MAX_BURST:
        raise KeyRequestInvalid(f"a burst is a whole number of requests in [1, {MAX_BURST}]")


def checked_key_id(key_id: str) -> str:
    if not KEY_ID.fullmatch(key_id):
        raise KeyRequestInvalid("a key id is the 16 hex digits after `gsk_` in the key")
    return key_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the store describes it (never its secret)."""

    key_id: str
    tenant: str
    name: str
    rate_per_s: float | None  # None: GUARDSTREAM_API_KEY_RATE_PER_S
    burst: int | None  # None: GUARDSTREAM_API_KEY_BURST
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ApiKey:
        return cls(
            row["key_id"],
            row["tenant"],
            row["name"],
            row["rate_per_s"],
            row["burst"],
            row["created_at"],
            row["revoked_at"],
        )


_COLUMNS = "key_id, tenant, name, rate_per_s, burst, created_at, revoked_at"


class KeyStore(Rows):
    """The `api_keys` table."""

    async def add(
        self,
        tenant: str,
        name: str = "",
        *,
        rate_per_s: float | None = None,
        burst: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key of `tenant`: its description and the key itself (shown once)."""
        checked_tenant(tenant)
        checked_name(name)
        checked_rate(rate_per_s, burst)
        key_id, key = new_key()
        row = await self.db.fetchrow(
            f"INSERT INTO api_keys (key_id, key_hash, tenant, name, rate_per_s, burst)"  # noqa: S608 - columns
            f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
            key_id,
            key_hash(key),
            tenant,
            name,
            rate_per_s,
            burst,
        )
        assert row is not None
        return ApiKey.from_row(row), key

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke the key (a revoked key stays revoked, at its first revocation's time);
        None when no key has this id."""
        checked_key_id(key_id)
        row = await self.db.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1"  # noqa: S608 - columns
            f" RETURNING {_COLUMNS}",
            key_id,
        )
        return None if row is None else ApiKey.from_row(row)

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of `tenant`), oldest first."""
        if tenant is not None:
            checked_tenant(tenant)
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1"  # noqa: S608 - columns
            " ORDER BY created_at, key_id",
            tenant,
        )
        return [ApiKey.from_row(r) for r in rows]

    async def find(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key with this id and its stored hash."""
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_id = $1",  # noqa: S608 - columns
            key_id,
        )
        return None if row is None else (ApiKey.from_row(row), row["key_hash"])


class Check(StrEnum):
    """Why a presented key is refused (the 401's `reason`)."""

    MISSING = "missing_key"
    INVALID = "invalid_key"  # malformed, unknown, or the secret does not match
    REVOKED = "revoked_key"  # the right secret of a revoked key


_Entry = tuple[float, "tuple[ApiKey, str] | None"]


class KeyRing:
    """Checks presented keys against `store`, through a cache of what it read per key id
    (`ttl_s`, at most `max_entries` ids, the oldest read dropped first)."""

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl_s: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = 2.0,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._timeout_s = timeout_s
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._reading: dict[str, asyncio.Task[tuple[ApiKey, str] | None]] = {}

    async def check(self, key: str | None) -> ApiKey | Check:
        """The key's description when it is a live key, else why not;
        `KeyStoreUnavailable` when the database cannot say."""
        if key is None:
            return Check.MISSING
        key_id = key_id_of(key)
        if key_id is None:
            return Check.INVALID
        found = await self._read(key_id)
        if found is None or not hmac.compare_digest(found[1], key_hash(key)):
            return Check.INVALID
        return Check.REVOKED if found[0].revoked_at is not None else found[0]

    async def _read(self, key_id: str) -> tuple[ApiKey, str] | None:
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        reading = self._reading.get(key_id)
        if reading is None:
            # A task of its own: a caller that goes away does not cancel the others' read.
            reading = asyncio.create_task(self._fetch(key_id), name="api-key-read")
            reading.add_done_callback(_retrieved)
            self._reading[key_id] = reading
        return await asyncio.shield(reading)

    async def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        read_at = self._clock()
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._store.find(key_id)
        except DB_ERRORS as exc:
            raise KeyStoreUnavailable(type(exc).__name__) from exc
        finally:
            del self._reading[key_id]
        if self._ttl_s > 0:
            self._cache.pop(key_id, None)
            self._cache[key_id] = (read_at + self._ttl_s, found)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return found


def _retrieved(task: asyncio.Task[object]) -> None:
    # A read whose callers all went away: its failure is theirs, not the loop's to log.
    if not task.cancelled():
        task.exception()
