"""The review database's plumbing: migrations, the connection pool, which errors are transient,
and `Rows`, the base of the per-table classes.

Migrations (`review/migrations/*.sql`, applied in name order) run at start-up under an advisory
lock and are recorded in `schema_migrations`, so concurrent starts apply each file once. Every
connection's `search_path` is the configured schema (tests use one schema each).

A table class runs its statements on what it was given: the pool (each statement its own
transaction) or the connection of one transaction (`ReviewStore.transaction()`), where the
change, its audit row and its outbox entries commit together. A method of several statements
that must hold together runs them in `Rows.atomic()`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent.parent / "migrations"
_LOCK_ID = 0x6773_7276  # advisory lock serialising migrations ("gsrv")

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


async def apply_migrations(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied now."""
    applied_now: list[str] = []
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(f'SET search_path TO "{schema}"')
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name in done:
                continue
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.name)
            applied_now.append(path.name)
    return applied_now


async def connect(settings: Settings, schema: str) -> asyncpg.Pool:
    """Migrate `schema`, then a pool whose connections work in it."""
    dsn = settings.database.url.get_secret_value()
    conn = await asyncpg.connect(dsn)
    try:
        applied = await apply_migrations(conn, schema)
    finally:
        await conn.close()
    if applied:
        log.info("review store migrated", extra={"schema": schema, "applied": applied})
    return await asyncpg.create_pool(
        dsn,
        min_size=2,
        max_size=settings.database.pool_max,
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
