"""Task context: each task's fingerprint and sentence vector (`task_vectors`), and the reads of
decided tasks the task page shows beside a task (duplicates, neighbours, the author's posts).

Every read names its tenant: a task never meets another tenant's decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from guardstream.contracts.events import ReviewOutcome, Verdict
from guardstream.review.context import DecidedItem
from guardstream.review.logic import PREVIEW_CHARS, text_preview
from guardstream.review.store.db import Rows

# Decided tasks with their first review; `$1` the tenant, `$2` whether to read text heads.
# Interpolated as a constant; every value travels as a bind parameter.
_DECIDED = (  # noqa: S608 - constants
    "SELECT t.task_id, t.human_verdict, t.model_verdict, r.outcome, t.categories, r.tags,"
    " r.reason, t.decided_at, CASE WHEN $2::bool THEN left(p.text, {chars}) END AS head"
    " FROM tasks t JOIN reviews r ON r.task_id = t.task_id AND r.stage = 'first'"
    " LEFT JOIN post_texts p ON p.tenant = t.tenant AND p.post_id = t.post_id"
    " {join} WHERE t.tenant = $1 AND t.state = 'decided' AND t.human_verdict IS NOT NULL"
).format(chars=PREVIEW_CHARS * 4, join="{join}")


def _decided(join: str, where: str, tail: str = "") -> str:
    return _DECIDED.format(join=join) + " AND " + where + tail  # constants only


_EXACT = _decided(
    "", "t.content_key = $3 AND t.task_id <> $4", " ORDER BY t.decided_at DESC LIMIT $5"
)
_NEAR = _decided(
    "JOIN task_vectors v ON v.task_id = t.task_id AND v.tenant = t.tenant",
    "v.fingerprint = $3 AND v.digits = $4 AND t.task_id <> $5",
    " ORDER BY t.decided_at DESC LIMIT $6",
)
_BY_IDS = _decided("", "t.task_id = ANY($3::text[])")
_BY_AUTHOR = _decided(
    "JOIN post_authors a ON a.tenant = t.tenant AND a.post_id = t.post_id",
    "a.author_key = $3 AND t.task_id <> $4",
    " ORDER BY t.decided_at DESC LIMIT $5",
)


def _item(row: asyncpg.Record) -> DecidedItem:
    head = row["head"]
    return DecidedItem(
        task_id=row["task_id"],
        human_verdict=Verdict(row["human_verdict"]),
        model_verdict=Verdict(row["model_verdict"]),
        outcome=ReviewOutcome(row["outcome"]),
        categories=tuple(row["categories"]),
        tags=tuple(row["tags"]),
        reason=row["reason"],
        decided_at=row["decided_at"],
        preview=text_preview(head) if head is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Unindexed:
    """A task whose text has arrived and has no vector yet."""

    task_id: str
    tenant: str
    text: str


@dataclass(frozen=True, slots=True)
class TaskVector:
    task_id: str
    tenant: str
    fingerprint: int | None
    digits: str
    model: str
    vector: bytes


@dataclass(frozen=True, slots=True)
class AuthorCounts:
    by_verdict: dict[str, int]
    corrected: int


class ContextRows(Rows):
    __slots__ = ()

    async def unindexed(self, limit: int, task_id: str | None = None) -> list[Unindexed]:
        """Tasks with a text and no vector, newest first (open tasks are read soonest);
        `task_id`: that task only."""
        rows = await self.db.fetch(
            "SELECT t.task_id, t.tenant, p.text FROM tasks t"
            " JOIN post_texts p ON p.post_id = t.post_id AND p.tenant = t.tenant"
            " WHERE ($2::text IS NULL OR t.task_id = $2)"
            " AND NOT EXISTS (SELECT 1 FROM task_vectors v WHERE v.task_id = t.task_id)"
            " ORDER BY t.created_at DESC LIMIT $1",
            limit,
            task_id,
        )
        return [Unindexed(r["task_id"], r["tenant"], r["text"]) for r in rows]

    async def save(self, vectors: Sequence[TaskVector]) -> int:
        """Store vectors not stored yet (a task erased meanwhile is skipped); how many."""
        if not vectors:
            return 0
        rows = await self.db.fetch(
            "INSERT INTO task_vectors (task_id, tenant, fingerprint, digits, model, vector)"
            " SELECT x.task_id, x.tenant, x.fingerprint, x.digits, x.model, x.vector"
            " FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],"
            " $6::bytea[]) AS x(task_id, tenant, fingerprint, digits, model, vector)"
            " JOIN tasks t ON t.task_id = x.task_id AND t.tenant = x.tenant"
            " ON CONFLICT (task_id) DO NOTHING RETURNING task_id",
            [v.task_id for v in vectors],
            [v.tenant for v in vectors],
            [v.fingerprint for v in vectors],
            [v.digits for v in vectors],
            [v.model for v in vectors],
            [v.vector for v in vectors],
        )
        return len(rows)

    async def vector(self, task_id: str, tenant: str) -> TaskVector | None:
        row = await self.db.fetchrow(
            "SELECT task_id, tenant, fingerprint, digits, model, vector FROM task_vectors"
            " WHERE task_id = $1 AND tenant = $2",
            task_id,
            tenant,
        )
        return TaskVector(**dict(row)) if row else None

    async def since(
        self, tenant: str, model: str, after: int, limit: int
    ) -> list[tuple[int, str, bytes]]:
        """The tenant's vectors of `model` stored after sequence number `after`, in order, as
        (seq, task_id, vector): what an in-process index has not read yet."""
        rows = await self.db.fetch(
            "SELECT seq, task_id, vector FROM task_vectors"
            " WHERE tenant = $1 AND model = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            tenant,
            model,
            after,
            limit,
        )
        return [(r["seq"], r["task_id"], r["vector"]) for r in rows]

    async def exact(
        self, tenant: str, content_key: str, exclude: str, limit: int, *, texts: bool
    ) -> list[DecidedItem]:
        rows = await self.db.fetch(_EXACT, tenant, texts, content_key, exclude, limit)
        return [_item(r) for r in rows]

    async def near(
        self, tenant: str, fingerprint: int, digits: str, exclude: str, limit: int, *, texts: bool
    ) -> list[DecidedItem]:
        rows = await self.db.fetch(_NEAR, tenant, texts, fingerprint, digits, exclude, limit)
        return [_item(r) for r in rows]

    async def decided(
        self, tenant: str, task_ids: Sequence[str], *, texts: bool
    ) -> dict[str, DecidedItem]:
        """Those of `task_ids` that are decided tasks of `tenant` (others are left out)."""
        if not task_ids:
            return {}
        rows = await self.db.fetch(_BY_IDS, tenant, texts, list(task_ids))
        return {r["task_id"]: _item(r) for r in rows}

    async def contested(
        self, since: datetime, tenant: str | None, limit: int
    ) -> list[ContestedRow]:
        """The newest `limit` contested decided tasks since `since` (of `tenant`, or all), with
        their stored vectors (tasks not embedded yet are left out)."""
        rows = await self.db.fetch(
            "SELECT t.task_id, t.tenant, t.lang, t.decided_at, t.human_verdict, t.model_verdict,"
            " r.outcome = 'correct' AS corrected, r.reason, left(p.text, $4) AS head,"
            " v.model, v.vector"
            " FROM tasks t JOIN reviews r ON r.task_id = t.task_id AND r.stage = 'first'"
            " JOIN task_vectors v ON v.task_id = t.task_id AND v.tenant = t.tenant"
            " LEFT JOIN post_texts p ON p.tenant = t.tenant AND p.post_id = t.post_id"
            " WHERE t.state = 'decided' AND t.decided_at >= $1"
            " AND ($2::text IS NULL OR t.tenant = $2)"
            " AND (r.outcome = 'correct' OR t.model_verdict = 'controversial')"
            " ORDER BY t.decided_at DESC LIMIT $3",
            since,
            tenant,
            limit,
            PREVIEW_CHARS * 4,
        )
        return [ContestedRow(**dict(r)) for r in rows]

    async def author_of(self, tenant: str, post_id: str) -> str | None:
        return await self.db.fetchval(  # type: ignore[no-any-return]
            "SELECT author_key FROM post_authors WHERE tenant = $1 AND post_id = $2",
            tenant,
            post_id,
        )

    async def by_author(
        self, tenant: str, author: str, exclude: str, limit: int, *, texts: bool
    ) -> tuple[list[DecidedItem], AuthorCounts]:
        """The author's latest decided posts in the tenant (not `exclude`), and counts over
        all of them: by human verdict, and how many corrected the model."""
        rows = await self.db.fetch(_BY_AUTHOR, tenant, texts, author, exclude, limit)
        counts = await self.db.fetch(
            "SELECT t.human_verdict, count(*) AS n,"
            " count(*) FILTER (WHERE r.outcome = 'correct') AS corrected"
            " FROM tasks t JOIN reviews r ON r.task_id = t.task_id AND r.stage = 'first'"
            " JOIN post_authors a ON a.tenant = t.tenant AND a.post_id = t.post_id"
            " WHERE t.tenant = $1 AND a.author_key = $2 AND t.task_id <> $3"
            " AND t.state = 'decided' AND t.human_verdict IS NOT NULL"
            " GROUP BY t.human_verdict",
            tenant,
            author,
            exclude,
        )
        return [_item(r) for r in rows], AuthorCounts(
            {r["human_verdict"]: r["n"] for r in counts}, sum(r["corrected"] for r in counts)
        )


@dataclass(frozen=True, slots=True)
class ContestedRow:
    """A decided task the model was unsure of or the reviewer corrected, with its vector."""

    task_id: str
    tenant: str
    lang: str | None
    decided_at: datetime
    human_verdict: str
    model_verdict: str
    corrected: bool
    reason: str | None
    head: str | None
    model: str
    vector: bytes
