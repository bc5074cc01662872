"""Claims: who holds a task, until when, and how many tasks one reviewer may hold.

The limit is the database's: a trigger on `tasks` refuses an assignment past
`claim_limit.max_claims` whatever the writer (`ClaimLimitReached`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from guardstream.contracts.errors import PermanentError
from guardstream.review.logic import Task
from guardstream.review.store.db import Rows
from guardstream.review.store.tasks import SELECT_TASKS, task_of


class ClaimLimitReached(PermanentError):
    """The database refused an assignment: the reviewer holds as many tasks as allowed."""


class ClaimRows(Rows):
    __slots__ = ()

    async def set_limit(self, max_claims: int) -> None:
        """The number of tasks one reviewer may hold, enforced by a trigger on `tasks`."""
        await self.db.execute("UPDATE claim_limit SET max_claims = $1", max_claims)

    async def held_by(self, reviewer: str, now: datetime) -> Task | None:
        """The task the reviewer holds with a live lock and the earliest deadline."""
        row = await self.db.fetchrow(
            SELECT_TASKS + " WHERE assignee = $1 AND state = 'assigned'"
            " AND lock_expires_at > $2 ORDER BY deadline LIMIT 1",
            reviewer,
            now,
        )
        return task_of(row) if row else None

    async def held_count(self, reviewer: str) -> int:
        """Tasks the reviewer holds, expired locks included: what the claim limit counts."""
        value = await self.db.fetchval(
            "SELECT count(*) FROM tasks WHERE assignee = $1 AND state = 'assigned'", reviewer
        )
        return int(value or 0)

    async def held_tasks(self, reviewer: str) -> list[Task]:
        """Every task the reviewer holds, live or expired lock, locked for this transaction."""
        rows = await self.db.fetch(
            SELECT_TASKS + " WHERE assignee = $1 AND state = 'assigned' ORDER BY task_id"
            " FOR UPDATE",
            reviewer,
        )
        return [task_of(r) for r in rows]

    async def next_claimable(self, tenants: Sequence[str], now: datetime) -> Task | None:
        """The open task with the earliest deadline nobody holds, locked for this transaction;
        tasks other transactions are claiming are skipped, never waited for. NO KEY UPDATE:
        a claim changes no key, so a row only key-share locked by a referencing insert (a
        review, an audit row, its task vector) is not skipped, and the turn stays in order."""
        every = "*" in tenants
        row = await self.db.fetchrow(
            SELECT_TASKS + " WHERE state <> 'decided' AND ($1 OR tenant = ANY($2::text[]))"
            " AND (state = 'pending' OR lock_expires_at <= $3)"
            " ORDER BY deadline LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED",
            every,
            list(tenants),
            now,
        )
        return task_of(row) if row else None

    async def any_claimable(self, tenants: Sequence[str], now: datetime) -> bool:
        """Whether an open task nobody holds exists, locked by another transaction or not
        (`next_claimable` found none while this is true: a claim or a task update is in flight)."""
        every = "*" in tenants
        return bool(
            await self.db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE state <> 'decided'"
                " AND ($1 OR tenant = ANY($2::text[]))"
                " AND (state = 'pending' OR lock_expires_at <= $3))",
                every,
                list(tenants),
                now,
            )
        )

    async def expired_locks(
        self, now: datetime, limit: int, *, assignee: str | None = None
    ) -> list[Task]:
        """Assigned tasks whose lock ran out (of one reviewer when `assignee` is given)."""
        rows = await self.db.fetch(
            SELECT_TASKS + " WHERE state = 'assigned'"
            " AND lock_expires_at <= $1 AND ($3::text IS NULL OR assignee = $3)"
            " ORDER BY lock_expires_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED",
            now,
            limit,
            assignee,
        )
        return [task_of(r) for r in rows]

    async def assign(self, task_id: str, reviewer: str, until: datetime, now: datetime) -> None:
        """Hand the task to the reviewer; `ClaimLimitReached` when the trigger refuses it (the
        transaction is then aborted)."""
        try:
            await self.db.execute(
                "UPDATE tasks SET state = 'assigned', assignee = $2, lock_expires_at = $3"
                " WHERE task_id = $1",
                task_id,
                reviewer,
                until,
            )
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name != "tasks_claim_limit":
                raise
            raise ClaimLimitReached(str(exc)) from exc
        await self.db.execute(
            "UPDATE reviewers SET last_assigned_at = $2 WHERE id = $1", reviewer, now
        )

    async def unassign(self, task_id: str) -> None:
        await self.db.execute(
            "UPDATE tasks SET state = 'pending', assignee = NULL, lock_expires_at = NULL"
            " WHERE task_id = $1",
            task_id,
        )
