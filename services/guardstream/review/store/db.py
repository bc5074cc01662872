"""The review database's plumbing: its migrations and pool, over `runtime.postgres` (which
also holds which errors are transient and `Rows`, the base of the per-table classes).

Migrations (`review/migrations/*.sql`, applied in name order) run at start-up under the
advisory lock every owner shares and are recorded in `schema_migrations`, so concurrent
starts apply each file once. Every connection's `search_path` is the configured schema (tests
use one schema each).

A table class runs its statements on what it was given: the pool (each statement its own
transaction) or the connection of one transaction (`ReviewStore.transaction()`), where the
change, its audit row and its outbox entries commit together. A method of several statements
that must hold together runs them in `Rows.atomic()`.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from guardstream.runtime import postgres
from guardstream.runtime.postgres import (
    DB_ERRORS,
    TRANSIENT_DB_ERRORS,
    Conn,
    Db,
    Migrations,
    Rows,
    affected,
)
from guardstream.runtime.settings import Settings

__all__ = [
    "DB_ERRORS",
    "MIGRATIONS",
    "REVIEW_MIGRATIONS",
    "TRANSIENT_DB_ERRORS",
    "Conn",
    "Db",
    "Rows",
    "affected",
    "apply_migrations",
    "connect",
]

MIGRATIONS = Path(__file__).parent.parent / "migrations"
REVIEW_MIGRATIONS = Migrations("review", MIGRATIONS, ledger="schema_migrations")


async def apply_migrations(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the review migrations not yet recorded; returns the names applied now."""
    return await postgres.apply_migrations(conn, schema, REVIEW_MIGRATIONS)


async def connect(settings: Settings, schema: str) -> asyncpg.Pool:
    """Migrate `schema`, then a pool whose connections work in it."""
    return await postgres.connect(
        settings.database.url.get_secret_value(),
        schema,
        REVIEW_MIGRATIONS,
        pool_max=settings.database.pool_max,
    )
