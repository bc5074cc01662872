"""QA audits: one batch per period (the primary key makes sampling idempotent across restarts
and replicas) of first reviews sampled for seniors to re-review blind; an item is done once a
QA-stage review of its task exists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from guardstream.review.logic import Task
from guardstream.review.store.db import Rows
from guardstream.review.store.tasks import TASK_COLUMNS, task_of


@dataclass(frozen=True, slots=True)
class QaCandidate:
    """A first review that may be sampled for QA."""

    task_id: str
    tenant: str
    reviewer: str  # the first reviewer (pseudonymous)


@dataclass(frozen=True, slots=True)
class QaEntry:
    period: str
    task: Task
    first_reviewer: str | None = None  # never shown to the senior before they decide


@dataclass(frozen=True, slots=True)
class QaBatch:
    period: str
    since: datetime
    until: datetime
    size: int
    items: int
    min_agreement: float
    sampled_at: datetime
    closed_at: datetime | None
    agreed: int | None
    compared: int | None
    alert_id: str | None


def _qa_batch(row: asyncpg.Record) -> QaBatch:
    return QaBatch(**{k: row[k] for k in QaBatch.__dataclass_fields__})


_TASK_COLUMNS_T = ", ".join(f"t.{c.strip()}" for c in TASK_COLUMNS.split(","))
# Items of open batches that no senior has re-reviewed yet (with their task).
_OPEN_QA_ITEMS = (
    f"SELECT i.period, i.reviewer AS first_reviewer, {_TASK_COLUMNS_T} FROM qa_items i"  # noqa: S608 - constant
    " JOIN qa_batches b ON b.period = i.period AND b.closed_at IS NULL"
    " JOIN tasks t ON t.task_id = i.task_id WHERE NOT EXISTS (SELECT 1 FROM reviews q"
    " WHERE q.task_id = i.task_id AND q.stage = 'qa')"
)


class QaRows(Rows):
    __slots__ = ()

    async def insert_batch(
        self, period: str, since: datetime, until: datetime, size: int, bar: float, now: datetime
    ) -> bool:
        """False when the period was sampled already (by this or another replica): the
        primary key is what makes sampling happen once per period."""
        status = await self.db.execute(
            "INSERT INTO qa_batches (period, since, until, size, min_agreement, sampled_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (period) DO NOTHING",
            period,
            since,
            until,
            size,
            bar,
            now,
        )
        return bool(status == "INSERT 0 1")

    async def candidates(self, since: datetime, until: datetime) -> list[QaCandidate]:
        """First reviews given in [since, until) whose task no senior has re-reviewed yet and
        no batch holds."""
        rows = await self.db.fetch(
            "SELECT r.task_id, t.tenant, r.reviewer FROM reviews r"
            " JOIN tasks t ON t.task_id = r.task_id"
            " WHERE r.stage = 'first' AND r.reviewed_at >= $1 AND r.reviewed_at < $2"
            " AND NOT EXISTS (SELECT 1 FROM reviews q WHERE q.task_id = r.task_id"
            " AND q.stage = 'qa')"
            # A cadence change may make periods overlap: an item is sampled only once.
            " AND NOT EXISTS (SELECT 1 FROM qa_items i WHERE i.task_id = r.task_id)",
            since,
            until,
        )
        return [QaCandidate(r["task_id"], r["tenant"], r["reviewer"]) for r in rows]

    async def insert_items(self, period: str, items: Sequence[QaCandidate]) -> None:
        await self.db.executemany(
            "INSERT INTO qa_items (period, task_id, tenant, reviewer) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            [(period, i.task_id, i.tenant, i.reviewer) for i in items],
        )

    async def open_batches(self, ended_by: datetime) -> list[str]:
        """Batches not closed yet whose reviews ended by `ended_by`, locked for closing."""
        rows = await self.db.fetch(
            "SELECT period FROM qa_batches WHERE closed_at IS NULL AND until <= $1"
            " ORDER BY until FOR UPDATE",
            ended_by,
        )
        return [r["period"] for r in rows]

    async def lock_open_batch_of(self, task_id: str) -> str | None:
        """The open batch holding this task, locked: QA decisions of one batch take turns,
        so the one deciding its last item sees all the others and closes it."""
        value = await self.db.fetchval(
            "SELECT b.period FROM qa_batches b JOIN qa_items i ON i.period = b.period"
            " WHERE i.task_id = $1 AND b.closed_at IS NULL ORDER BY b.period LIMIT 1"
            " FOR UPDATE OF b",
            task_id,
        )
        return str(value) if value is not None else None

    async def undecided(self, period: str) -> int:
        value = await self.db.fetchval(
            "SELECT count(*) FROM qa_items i WHERE i.period = $1 AND NOT EXISTS"
            " (SELECT 1 FROM reviews q WHERE q.task_id = i.task_id AND q.stage = 'qa')",
            period,
        )
        return int(value or 0)

    async def progress(self, period: str, tenants: Sequence[str]) -> tuple[int, int]:
        """(items, items without a QA review) of the batch, over `tenants`."""
        row = await self.db.fetchrow(
            "SELECT count(*) AS items, count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM"
            " reviews q WHERE q.task_id = i.task_id AND q.stage = 'qa')) AS undecided"
            " FROM qa_items i WHERE i.period = $1 AND ($2 OR i.tenant = ANY($3::text[]))",
            period,
            "*" in tenants,
            list(tenants),
        )
        assert row is not None
        return int(row["items"]), int(row["undecided"])

    async def scores(
        self, period: str, tenants: Sequence[str] = ("*",)
    ) -> dict[str, tuple[int, int]]:
        """First reviewer → (QA re-reviews agreeing with their label, re-reviews) over the
        batch's items of `tenants`. Every senior's re-review of an item counts once."""
        rows = await self.db.fetch(
            "SELECT i.reviewer, count(q.review_id) AS checked,"
            " count(q.review_id) FILTER (WHERE q.verdict = f.verdict) AS agreed"
            " FROM qa_items i JOIN reviews f ON f.task_id = i.task_id AND f.stage = 'first'"
            " LEFT JOIN reviews q ON q.task_id = i.task_id AND q.stage = 'qa'"
            " WHERE i.period = $1 AND ($2 OR i.tenant = ANY($3::text[]))"
            " GROUP BY i.reviewer ORDER BY i.reviewer",
            period,
            "*" in tenants,
            list(tenants),
        )
        return {r["reviewer"]: (r["agreed"], r["checked"]) for r in rows}

    async def close_batch(
        self, period: str, agreed: int, compared: int, alert_id: str | None, now: datetime
    ) -> None:
        await self.db.execute(
            "UPDATE qa_batches SET closed_at = $2, agreed = $3, compared = $4, alert_id = $5"
            " WHERE period = $1",
            period,
            now,
            agreed,
            compared,
            alert_id,
        )

    async def batch(self, period: str) -> QaBatch | None:
        row = await self.db.fetchrow(
            "SELECT b.*, (SELECT count(*) FROM qa_items i WHERE i.period = b.period) AS items"
            " FROM qa_batches b WHERE period = $1",
            period,
        )
        return _qa_batch(row) if row else None

    async def latest_batch(self) -> QaBatch | None:
        row = await self.db.fetchrow(
            "SELECT b.*, (SELECT count(*) FROM qa_items i WHERE i.period = b.period) AS items"
            " FROM qa_batches b ORDER BY period DESC LIMIT 1"
        )
        return _qa_batch(row) if row else None

    async def queue(self, reviewer: str, tenants: Sequence[str], limit: int) -> list[QaEntry]:
        """Open batches' items nobody has re-reviewed, of the senior's tenants, never their
        own first reviews; oldest period first, then a stable order."""
        rows = await self.db.fetch(
            _OPEN_QA_ITEMS + " AND ($1 OR i.tenant = ANY($2::text[])) AND i.reviewer <> $3"
            " ORDER BY i.period, i.task_id LIMIT $4",
            "*" in tenants,
            list(tenants),
            reviewer,
            limit,
        )
        return [QaEntry(r["period"], task_of(r), r["first_reviewer"]) for r in rows]

    async def open_item(self, task_id: str) -> QaEntry | None:
        """The task as an item of an open batch that no senior has re-reviewed yet."""
        row = await self.db.fetchrow(
            _OPEN_QA_ITEMS + " AND i.task_id = $1 ORDER BY i.period LIMIT 1",
            task_id,
        )
        return QaEntry(row["period"], task_of(row), row["first_reviewer"]) if row else None
