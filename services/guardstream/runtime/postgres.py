"""PostgreSQL plumbing shared by the processes that own tables (review, api): migrations, the
connection pool, which errors are transient, and `Rows`, the base of per-table classes.

Each owner keeps its migrations in its own folder (`review/migrations`, `api/migrations`),
applied in name order and recorded in its own ledger table (`schema_migrations` for review,
`api_schema_migrations` for the API), all in the one configured schema. Every owner's run
takes the same advisory lock, so concurrent starts of any processes apply each file once and
never race on `CREATE SCHEMA`: migrations are few and run at start-up only, so serialising
all owners costs nothing and lets one owner's migration refer to another's tables.
Every pooled connection's `search_path` is the schema (tests use one schema each).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x6773_7276  # advisory lock serialising every owner's migrations ("gsrv")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    OSError,
    TimeoutError,
)
DB_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *TRANSIENT_DB_ERRORS)

Conn: TypeAlias = "asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]"
Db: TypeAlias = "Conn | asyncpg.Pool"  # what a table class runs its statements on

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migrations:
    """One owner's migrations: the folder of its `*.sql` files and the ledger table that
    records which of them ran."""

    owner: str
    directory: Path
    ledger: str

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.ledger):
            raise ValueError(f"not a plain table name: {self.ledger!r}")

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.sql"))


async def apply_migrations(conn: asyncpg.Connection, schema: str, owner: Migrations) -> list[str]:
    """Apply `owner`'s migrations not yet in its ledger; returns the names applied now."""
    if not _IDENTIFIER.match(schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {owner.ledger} ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {owner.ledger}")}  # noqa: S608 - a checked identifier
        for path in owner.files():
            if path.name in done:
                continue
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute(f"INSERT INTO {owner.ledger} (version) VALUES ($1)", path.name)  # noqa: S608 - a checked identifier
            applied_now.append(path.name)
    return applied_now


async def connect(
    dsn: str, schema: str, owner: Migrations, *, pool_max: int, pool_min: int = 2
) -> asyncpg.Pool:
    """Migrate `owner`'s tables in `schema`, then a pool whose connections work in it."""
    conn = await asyncpg.connect(dsn)
    try:
        applied = await apply_migrations(conn, schema, owner)
    finally:
        await conn.close()
    if applied:
        log.info(
            "store migrated", extra={"owner": owner.owner, "schema": schema, "applied": applied}
        )
    return await asyncpg.create_pool(
        dsn,
        min_size=min(pool_min, pool_max),
        max_size=pool_max,
        server_settings={"search_path": schema},
    )


def affected(status: str) -> int:
    """The row count of a command status ("DELETE 3")."""
    return int(status.split()[-1])


class Rows:
    """Base of the per-table classes: the statements run on `db`."""

    __slots__ = ("db",)

    def __init__(self, db: Db) -> None:
        self.db = db

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Conn]:
        """One connection for statements that hold together: a transaction of their own on
        the pool, a savepoint inside the caller's transaction."""
        if isinstance(self.db, asyncpg.Pool):
            async with self.db.acquire() as conn, conn.transaction():
                yield conn
        else:
            async with self.db.transaction():
                yield self.db
