"""Review tasks: created from the decisions sent to review (one per tenant, post and policy),
marked by SLA events, read by the queue, decided once.

Claims (who holds a task, and for how long) are `store.claims`; both share the row mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg
import orjson

from guardstream.contracts.events import Action, Verdict
from guardstream.contracts.identity import PostIdentity
from guardstream.review.logic import SlaState, Task, TaskState
from guardstream.review.store.audit import AuditFailed
from guardstream.review.store.db import DB_ERRORS, Rows, affected
from guardstream.review.store.posts import lock_posts

# Interpolated into queries as a constant; every value travels as a bind parameter.
TASK_COLUMNS = (
    "task_id, post_id, policy, tenant, lang, region, decision_id, post_event_id, content_key,"
    " model_verdict, categories, confidence, reason, model, adapter, domain_tags, created_at,"
    " deadline, warn_at, assign_by, state, sla, assignee, lock_expires_at, decided_at,"
    " human_verdict, late, downgrade_decision_id, model_refusal, input_truncated, action"
)
SELECT_TASKS = f"SELECT {TASK_COLUMNS} FROM tasks"  # noqa: S608 - constant

# The data-modifying CTE runs even though nothing reads from it; the statement is atomic.
_QUEUE_FROM = (
    " WHERE state <> 'decided' AND ($1 OR tenant = ANY($2::text[]))"
    " AND ($3::text IS NULL OR tenant = $3) AND ($4::text IS NULL OR lang = $4)"
    " AND ($5::text IS NULL OR $5 = ANY(categories))"
    " AND ($6::text IS NULL OR $6 = ANY(domain_tags))"
    " ORDER BY deadline LIMIT $7"
)
_QUEUE_AUDIT = (
    "WITH logged AS (INSERT INTO audit (actor, action, outcome, tenant, detail)"
    " VALUES ($8, 'queue', 'ok', $3, $9::jsonb) RETURNING id) "
)
_QUEUE_QUERY = _QUEUE_AUDIT + SELECT_TASKS + _QUEUE_FROM


def task_of(row: asyncpg.Record) -> Task:
    return Task(
        task_id=row["task_id"],
        identity=PostIdentity(
            tenant=row["tenant"],
            post_id=row["post_id"],
            post_event_id=row["post_event_id"],
            policy=row["policy"],
            content_key=row["content_key"],
        ),
        lang=row["lang"],
        region=row["region"],
        decision_id=row["decision_id"],
        model_verdict=Verdict(row["model_verdict"]),
        categories=tuple(row["categories"]),
        confidence=row["confidence"],
        reason=row["reason"],
        model=row["model"],
        adapter=row["adapter"],
        domain_tags=tuple(row["domain_tags"]),
        created_at=row["created_at"],
        deadline=row["deadline"],
        warn_at=row["warn_at"],
        assign_by=row["assign_by"],
        state=TaskState(row["state"]),
        sla=SlaState(row["sla"]),
        assignee=row["assignee"],
        lock_expires_at=row["lock_expires_at"],
        decided_at=row["decided_at"],
        human_verdict=Verdict(row["human_verdict"]) if row["human_verdict"] else None,
        late=row["late"],
        downgrade_decision_id=row["downgrade_decision_id"],
        model_refusal=row["model_refusal"],
        input_truncated=row["input_truncated"],
        action=Action(row["action"]),
    )


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: str
    identity: PostIdentity
    lang: str | None
    region: str | None
    decision_id: str
    model_verdict: str
    categories: tuple[str, ...]
    confidence: float | None
    reason: str
    model: str
    adapter: str | None
    domain_tags: tuple[str, ...]
    created_at: datetime
    deadline: datetime
    warn_at: datetime
    assign_by: datetime
    traceparent: str | None = None  # of the actions.review record: its events continue it
    refusal: bool | None = None  # response moderation: the model's refusal label
    input_truncated: bool = False  # the model judged a shortened text
    action: str = "review"  # review or hold: a held post stays unpublished until decided


@dataclass(frozen=True, slots=True)
class SlaMark:
    decision_id: str
    sla: SlaState
    downgrade_decision_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class QueueFilter:
    tenant: str | None = None
    lang: str | None = None
    category: str | None = None
    tag: str | None = None  # a policy pack domain tag, e.g. "领域:公共卫生"


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int  # open tasks (pending or assigned)
    expired: int  # open tasks past their SLA
    avg_response_s: float | None  # decided in the last hour: creation → decision


class TaskRows(Rows):
    __slots__ = ()

    async def get(self, task_id: str, *, lock: bool = False) -> Task | None:
        """The task; `lock`: its row locked for this transaction."""
        row = await self.db.fetchrow(
            SELECT_TASKS + " WHERE task_id = $1" + (" FOR UPDATE" if lock else ""), task_id
        )
        return task_of(row) if row else None

    async def create(self, tasks: Sequence[NewTask]) -> int:
        """Insert the tasks not there yet (unique per tenant, post and policy); returns how many
        were new. An SLA mark that arrived first is applied to its task."""
        if not tasks:
            return 0
        async with self.atomic() as conn:
            await lock_posts(conn, [(t.identity.tenant, t.identity.post_id) for t in tasks])
            rows = await conn.fetch(
                "INSERT INTO tasks (task_id, post_id, policy, tenant, lang, region, decision_id,"
                " post_event_id, content_key, model_verdict, categories, confidence, reason,"
                " model, adapter, domain_tags, created_at, deadline, warn_at, assign_by, sla,"
                " downgrade_decision_id, traceparent, model_refusal, input_truncated, action)"
                " SELECT x.task_id, x.post_id, x.policy, x.tenant, COALESCE(x.lang, p.lang),"
                " COALESCE(x.region, p.region),"
                " x.decision_id, x.post_event_id, x.content_key, x.model_verdict,"
                " ARRAY(SELECT jsonb_array_elements_text(x.categories::jsonb)), x.confidence,"
                " x.reason, x.model, x.adapter,"
                " ARRAY(SELECT jsonb_array_elements_text(x.domain_tags::jsonb)),"
                " x.created_at, x.deadline, x.warn_at, x.assign_by,"
                " COALESCE(m.sla, 'ok'), m.downgrade_decision_id, x.traceparent, x.refusal,"
                " x.input_truncated, x.action"
                " FROM unnest("
                " $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
                " $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
                " $12::float8[], $13::text[], $14::text[], $15::text[], $16::text[],"
                " $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::timestamptz[],"
                " $21::text[], $22::bool[], $23::bool[], $24::text[]"
                " ) AS x(task_id, post_id, policy, tenant, lang, region, decision_id,"
                " post_event_id, content_key, model_verdict, categories, confidence, reason,"
                " model, adapter, domain_tags, created_at, deadline, warn_at, assign_by,"
                " traceparent, refusal, input_truncated, action)"
                " LEFT JOIN sla_marks m ON m.decision_id = x.decision_id"
                " LEFT JOIN post_texts p ON p.post_id = x.post_id AND p.tenant = x.tenant"
                " ON CONFLICT (tenant, post_id, policy) DO NOTHING RETURNING task_id",
                [t.task_id for t in tasks],
                [t.identity.post_id for t in tasks],
                [t.identity.policy for t in tasks],
                [t.identity.tenant for t in tasks],
                [t.lang for t in tasks],
                [t.region for t in tasks],
                [t.decision_id for t in tasks],
                [t.identity.post_event_id for t in tasks],
                [t.identity.content_key for t in tasks],
                [t.model_verdict for t in tasks],
                # Arrays of arrays must be rectangular: categories travel as JSON text.
                [orjson.dumps(list(t.categories)).decode() for t in tasks],
                [t.confidence for t in tasks],
                [t.reason for t in tasks],
                [t.model for t in tasks],
                [t.adapter for t in tasks],
                [orjson.dumps(list(t.domain_tags)).decode() for t in tasks],
                [t.created_at for t in tasks],
                [t.deadline for t in tasks],
                [t.warn_at for t in tasks],
                [t.assign_by for t in tasks],
                [t.traceparent for t in tasks],
                [t.refusal for t in tasks],
                [t.input_truncated for t in tasks],
                [t.action for t in tasks],
            )
        return len(rows)

    async def mark_sla(self, marks: Sequence[SlaMark]) -> int:
        """Apply SLA warnings/expiries to their tasks (never downgrading expired to warning);
        marks for tasks not created yet wait in `sla_marks`. Returns tasks updated."""
        updated = 0
        async with self.atomic() as conn:
            for mark in marks:
                status = await conn.execute(
                    "UPDATE tasks SET sla = $2,"
                    " downgrade_decision_id = COALESCE($3, downgrade_decision_id)"
                    " WHERE decision_id = $1 AND sla <> 'expired'"
                    " AND NOT (sla = 'warning' AND $2 = 'warning')",
                    mark.decision_id,
                    mark.sla.value,
                    mark.downgrade_decision_id,
                )
                updated += affected(status)
                await conn.execute(
                    "INSERT INTO sla_marks (decision_id, sla, downgrade_decision_id, at)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (decision_id) DO UPDATE SET"
                    " sla = CASE WHEN sla_marks.sla = 'expired' THEN 'expired'"
                    " ELSE EXCLUDED.sla END,"
                    " downgrade_decision_id = COALESCE(EXCLUDED.downgrade_decision_id,"
                    " sla_marks.downgrade_decision_id)",
                    mark.decision_id,
                    mark.sla.value,
                    mark.downgrade_decision_id,
                    mark.at,
                )
        return updated

    async def mark_decided(self, task_id: str, verdict: Verdict, late: bool, now: datetime) -> None:
        await self.db.execute(
            "UPDATE tasks SET state = 'decided', decided_at = $2, human_verdict = $3, late = $4,"
            " lock_expires_at = NULL WHERE task_id = $1",
            task_id,
            now,
            verdict.value,
            late,
        )

    async def queue(
        self, actor: str, tenants: Sequence[str], filters: QueueFilter, limit: int
    ) -> list[Task]:
        """Open tasks by deadline, and the audit row of this read, in ONE statement (one round
        trip, one commit: the queue page is the hot path). If either part fails, neither
        happens and the read is refused as an audit failure."""
        every = "*" in tenants
        detail = orjson.dumps(
            {k: v for k, v in asdict(filters).items() if v is not None} | {"limit": limit}
        ).decode()
        try:
            rows = await self.db.fetch(
                _QUEUE_QUERY,
                every,
                list(tenants),
                filters.tenant,
                filters.lang,
                filters.category,
                filters.tag,
                limit,
                actor,
                detail,
            )
        except DB_ERRORS as exc:
            raise AuditFailed(
                f"queue read with its audit row failed: {type(exc).__name__}"
            ) from exc
        return [task_of(r) for r in rows]

    async def stats(self, tenants: Sequence[str], now: datetime) -> QueueStats:
        every = "*" in tenants
        row = await self.db.fetchrow(
            "SELECT o.depth, o.expired, d.avg_s FROM"
            " (SELECT count(*) AS depth, count(*) FILTER (WHERE sla = 'expired') AS expired"
            "  FROM tasks WHERE state <> 'decided' AND ($1 OR tenant = ANY($2::text[]))) o,"
            " (SELECT avg(extract(epoch FROM decided_at - created_at)) AS avg_s FROM tasks"
            "  WHERE state = 'decided' AND decided_at > $3::timestamptz - interval '1 hour'"
            "  AND ($1 OR tenant = ANY($2::text[]))) d",
            every,
            list(tenants),
            now,
        )
        assert row is not None
        avg = row["avg_s"]
        return QueueStats(row["depth"], row["expired"], float(avg) if avg is not None else None)

    async def depth_by_tenant(self) -> dict[str, int]:
        """Open tasks per tenant (a gauge)."""
        rows = await self.db.fetch(
            "SELECT tenant, count(*) AS n FROM tasks WHERE state <> 'decided' GROUP BY tenant"
        )
        return {r["tenant"]: r["n"] for r in rows}
