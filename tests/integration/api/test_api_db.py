"""The API's tables beside the review store's (`runtime.postgres`): each owner migrates the
one schema with its own ledger, concurrent starts apply every file once, and a second start
applies nothing."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from pydantic import SecretStr

from guardstream.api import db as api_db
from guardstream.review.store import db as review_db
from guardstream.runtime.postgres import apply_migrations
from guardstream.runtime.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def versions(conn: asyncpg.Connection, ledger: str) -> list[str]:
    return [r["version"] for r in await conn.fetch(f"SELECT version FROM {ledger} ORDER BY 1")]


async def test_review_and_api_migrate_one_schema_each_with_its_own_ledger(
    database_url: str,
) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    settings = Settings(database={"url": SecretStr(database_url), "review_schema": schema})
    conn = await asyncpg.connect(database_url)
    try:
        # Both owners, twice each, start at once on a schema that does not exist yet.
        pools = await asyncio.gather(
            review_db.connect(settings, schema),
            api_db.connect(settings),
            review_db.connect(settings, schema),
            api_db.connect(settings),
        )
        for pool in pools:
            await pool.close()
        await conn.execute(f'SET search_path TO "{schema}"')
        review = await versions(conn, "schema_migrations")
        api = await versions(conn, "api_schema_migrations")
        assert review == [p.name for p in review_db.REVIEW_MIGRATIONS.files()]
        assert api == [p.name for p in api_db.API_MIGRATIONS.files()]
        assert "0001_api_keys.sql" in api and "0001_review.sql" in review
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 0
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
        # A later start applies nothing.
        assert await review_db.apply_migrations(conn, schema) == []
        assert await apply_migrations(conn, schema, api_db.API_MIGRATIONS) == []
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
