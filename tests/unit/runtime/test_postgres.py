"""`runtime.postgres` without a database: an owner's ledger and the schema are plain
identifiers (they are written into SQL), its migrations run in name order, and review and
the API keep separate ledgers over separate folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardstream.api.db import API_MIGRATIONS
from guardstream.review.store.db import REVIEW_MIGRATIONS
from guardstream.runtime.postgres import Migrations, apply_migrations

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("ledger", ["", "Ledger", "a;drop table x", "a b", "x" * 64, 'a"'])
def test_a_ledger_is_a_plain_table_name(ledger: str) -> None:
    with pytest.raises(ValueError, match="plain table name"):
        Migrations("x", Path(), ledger)


async def test_a_schema_is_a_plain_name_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="plain schema name"):
        await apply_migrations(None, 'x"; drop schema public; --', API_MIGRATIONS)  # type: ignore[arg-type]


def test_review_and_the_api_keep_their_own_ledgers_and_folders(tmp_path: Path) -> None:
    assert REVIEW_MIGRATIONS.ledger == "schema_migrations"
    assert API_MIGRATIONS.ledger == "api_schema_migrations"
    assert REVIEW_MIGRATIONS.directory != API_MIGRATIONS.directory
    assert API_MIGRATIONS.files()[0].name == "0001_api_keys.sql"
    for name in ("0010_c.sql", "0002_b.sql", "0001_a.sql", "notes.txt"):
        (tmp_path / name).write_text("")
    owner = Migrations("t", tmp_path, "t_migrations")
    assert [p.name for p in owner.files()] == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]
