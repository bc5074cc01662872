"""API fixtures: every API test's settings name a PostgreSQL schema of its own (the API's
keys live there), dropped afterwards, and `add_key` makes a key as `guardstream api add-key`
does, through the same store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from guardstream.api import db
from guardstream.api.keys import KeyStore
from guardstream.runtime.settings import Settings


@pytest.fixture
async def settings(settings: Settings, database_url: str) -> AsyncIterator[Settings]:
    schema = f"t_{settings.namespace}"
    yield settings.replace(database={"url": SecretStr(database_url), "review_schema": schema})
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def database_env(settings: Settings) -> dict[str, str]:
    """What a child process needs to find the test's key store."""
    return {
        "DATABASE_URL": settings.database.url.get_secret_value(),
        "GUARDSTREAM_REVIEW_DB_SCHEMA": settings.database.review_schema,
    }


async def add_key(
    settings: Settings,
    tenant: str = "default",
    *,
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> str:
    pool = await db.connect(settings)
    try:
        _, key = await KeyStore(pool).add(tenant, "test", rate_per_s=rate_per_s, burst=burst)
    finally:
        await pool.close()
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
