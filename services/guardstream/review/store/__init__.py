"""The review store in PostgreSQL (asyncpg): one module per table, each owning its SQL.

| module        | tables                                   |
|---------------|------------------------------------------|
| `tasks`       | tasks (creation, SLA marks, queue reads), sla_marks |
| `claims`      | tasks' assignee and lock, claim_limit    |
| `posts`       | post_texts                               |
| `reviewers`   | reviewers, api_tokens, console_sessions  |
| `reviews`     | reviews                                  |
| `qa`          | qa_batches, qa_items                     |
| `outbox`      | outbox (its kinds and payload models)    |
| `audit`       | audit                                    |
| `context`     | task_vectors; decided tasks beside a task |
| `casebook`    | casebook (entries), the contested tasks they come from |
| `erasure`     | every table's rows of erased posts, post_authors |
| `retention`   | purges by age (`guardstream maintenance`) |
| `db`          | migrations, the pool, transient errors   |

`ReviewStore` holds the pool; its table attributes run each statement alone (a read, or a
change that is one statement or opens its own transaction). State changes of the review
workflow happen inside `ReviewStore.transaction()`, whose `Tx` has the same tables on one
connection: the change, its audit row and its outbox entries commit together, so a failed
audit write fails the whole action and nothing is stored half-way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from guardstream.review.store.audit import AuditRows
from guardstream.review.store.casebook import CasebookRows
from guardstream.review.store.claims import ClaimRows
from guardstream.review.store.context import ContextRows
from guardstream.review.store.db import DB_ERRORS, Conn, Db, connect
from guardstream.review.store.erasure import ErasureRows
from guardstream.review.store.outbox import OutboxRows
from guardstream.review.store.posts import PostRows
from guardstream.review.store.qa import QaRows
from guardstream.review.store.retention import RetentionRows
from guardstream.review.store.reviewers import CredentialRows, ReviewerRows
from guardstream.review.store.reviews import ReviewRows
from guardstream.review.store.tasks import TaskRows
from guardstream.runtime.settings import Settings


class Tables:
    """Every review table, over one pool or one transaction's connection."""

    def __init__(self, db: Db) -> None:
        self.tasks = TaskRows(db)
        self.claims = ClaimRows(db)
        self.posts = PostRows(db)
        self.reviewers = ReviewerRows(db)
        self.credentials = CredentialRows(db)
        self.reviews = ReviewRows(db)
        self.qa = QaRows(db)
        self.outbox = OutboxRows(db)
        self.audit = AuditRows(db)
        self.context = ContextRows(db)
        self.casebook = CasebookRows(db)
        self.erasure = ErasureRows(db)
        self.retention = RetentionRows(db)


class Tx(Tables):
    """One transaction: the state change, its audit row and its outbox entries together."""

    def __init__(self, conn: Conn) -> None:
        super().__init__(conn)
        self.conn = conn


class ReviewStore(Tables):
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        super().__init__(pool)
        self._pool = pool
        self.schema = schema

    @classmethod
    async def open(cls, settings: Settings, *, schema: str | None = None) -> ReviewStore:
        """Migrate the schema (`review_db_schema` unless given) and connect to it."""
        name = schema or settings.database.review_schema
        return cls(await connect(settings, name), name)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield Tx(conn)

    async def ping(self) -> bool:
        try:
            return bool(await self._pool.fetchval("SELECT 1"))
        except DB_ERRORS:
            return False
