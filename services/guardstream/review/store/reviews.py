"""Reviews as published: one first-stage review per task (whoever gave it), one QA re-review
per senior, and the agreement between them."""

from __future__ import annotations

from collections.abc import Sequence

from guardstream.contracts.events import Action, Review, Verdict
from guardstream.review.store.db import Rows


class ReviewRows(Rows):
    __slots__ = ()

    async def insert(
        self, review: Review, *, action: Action | None = None, human_decision_id: str | None = None
    ) -> bool:
        """Store a review as published; `action` and `human_decision_id`: what a first review
        actioned. False when this review exists already (a re-submitted form)."""
        status = await self.db.execute(
            "INSERT INTO reviews (review_id, task_id, stage, reviewer, outcome, verdict,"
            " categories, reason, tags, late, action, human_decision_id, reviewed_at, refusal)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            " ON CONFLICT DO NOTHING",
            review.review_id,
            review.task_id,
            review.stage.value,
            review.reviewer,
            review.outcome.value,
            review.verdict.value,
            list(review.categories),
            review.reason,
            list(review.tags),
            review.late,
            action.value if action is not None else None,
            human_decision_id,
            review.reviewed_at,
            review.refusal,
        )
        return bool(status == "INSERT 0 1")

    async def first_verdict(self, task_id: str) -> Verdict | None:
        value = await self.db.fetchval(
            "SELECT verdict FROM reviews WHERE task_id = $1 AND stage = 'first'", task_id
        )
        return Verdict(value) if value else None

    async def first_reviewer(self, task_id: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT reviewer FROM reviews WHERE task_id = $1 AND stage = 'first'", task_id
        )
        return str(value) if value is not None else None

    async def agreement_pairs(self, tenants: Sequence[str]) -> list[tuple[Verdict, Verdict]]:
        """(first label, QA label) of every re-reviewed task of `tenants`."""
        every = "*" in tenants
        rows = await self.db.fetch(
            "SELECT f.verdict AS first, q.verdict AS qa FROM reviews q"
            " JOIN reviews f ON f.task_id = q.task_id AND f.stage = 'first'"
            " JOIN tasks t ON t.task_id = q.task_id"
            " WHERE q.stage = 'qa' AND ($1 OR t.tenant = ANY($2::text[]))",
            every,
            list(tenants),
        )
        return [(Verdict(r["first"]), Verdict(r["qa"])) for r in rows]

    async def agreement_by_tenant(self) -> dict[str, tuple[int, int]]:
        """(compared, agreed) QA re-reviews per tenant (a gauge)."""
        rows = await self.db.fetch(
            "SELECT t.tenant, count(*) AS compared,"
            " count(*) FILTER (WHERE f.verdict = q.verdict) AS agreed FROM reviews q"
            " JOIN reviews f ON f.task_id = q.task_id AND f.stage = 'first'"
            " JOIN tasks t ON t.task_id = q.task_id WHERE q.stage = 'qa' GROUP BY t.tenant"
        )
        return {r["tenant"]: (r["compared"], r["agreed"]) for r in rows}
