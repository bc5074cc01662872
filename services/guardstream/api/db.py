"""The API's tables in PostgreSQL: its migrations (`api/migrations/*.sql`, ledger
`api_schema_migrations`) in the schema the review store uses (`GUARDSTREAM_REVIEW_DB_SCHEMA`),
and the pool the API process opens over them (`runtime.postgres`)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from guardstream.runtime import postgres
from guardstream.runtime.postgres import DB_ERRORS, Migrations
from guardstream.runtime.settings import Settings

__all__ = ["API_MIGRATIONS", "DB_ERRORS", "connect"]

API_MIGRATIONS = Migrations(
    "api", Path(__file__).parent / "migrations", ledger="api_schema_migrations"
)


async def connect(settings: Settings, schema: str | None = None) -> asyncpg.Pool:
    """Migrate the API's tables in `schema` (the configured one unless given), then a pool."""
    return await postgres.connect(
        settings.database.url.get_secret_value(),
        schema or settings.database.review_schema,
        API_MIGRATIONS,
        pool_max=settings.api.db_pool_max,
        pool_min=1,
    )
