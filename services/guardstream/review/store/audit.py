"""The audit table: one row per access to the review data, written in the transaction of the
action it records (a failed write fails the action: `AuditFailed`)."""

from __future__ import annotations

from typing import Any

import orjson

from guardstream.contracts.errors import TransientError
from guardstream.review.store.db import DB_ERRORS, Rows


class AuditFailed(TransientError, RuntimeError):
    """The audit row could not be written: the action it records does not happen."""


class AuditRows(Rows):
    __slots__ = ()

    async def write(
        self,
        *,
        actor: str | None,
        action: str,
        outcome: str = "ok",
        tenant: str | None = None,
        task_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One row; on the pool it is a commit of its own (an access that changes nothing,
        e.g. a denied request)."""
        try:
            await self.db.execute(
                "INSERT INTO audit (actor, action, outcome, tenant, task_id, detail)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                actor,
                action,
                outcome,
                tenant,
                task_id,
                orjson.dumps(detail or {}).decode(),
            )
        except DB_ERRORS as exc:
            raise AuditFailed(f"audit write failed: {type(exc).__name__}") from exc
