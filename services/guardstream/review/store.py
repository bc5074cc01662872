"""The review store in PostgreSQL (asyncpg): tasks, reviewers, reviews, audit rows, outbox.

Migrations (`review/migrations/*.sql`, applied in name order) run at start-up under an advisory
lock and are recorded in `schema_migrations`, so concurrent starts apply each file once. Every
connection's `search_path` is the configured schema (tests use one schema each).

State changes happen inside `ReviewStore.transaction()`; the audit row and the events to
publish (the outbox) are written in that same transaction, so a failed audit write fails the
whole action and nothing is stored half-way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from guardstream.contracts.errors import PermanentError, TransientError
from guardstream.contracts.events import Action, Review, Verdict
from guardstream.review.logic import Reviewer, Role, SlaState, Task, TaskState
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_ID = 0x6773_7276  # advisory lock serialising migrations ("gsrv")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    OSError,
    TimeoutError,
)


DB_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *TRANSIENT_DB_ERRORS)
Conn: TypeAlias = "asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]"


class AuditFailed(TransientError, RuntimeError):
    """The audit row could not be written: the action it records does not happen."""


class ClaimLimitReached(PermanentError):
    """The database refused an assignment: the reviewer holds as many tasks as allowed."""


async def apply_migrations(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied now."""
    applied_now: list[str] = []
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(f'SET search_path TO "{schema}"')
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name in done:
                continue
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.name)
            applied_now.append(path.name)
    return applied_now


# Interpolated into queries as a constant; every value travels as a bind parameter.
_TASK_COLUMNS = (
    "task_id, post_id, policy, tenant, lang, region, decision_id, post_event_id, content_key,"
    " model_verdict, categories, confidence, reason, model, adapter, domain_tags, created_at,"
    " deadline, warn_at, assign_by, state, sla, assignee, lock_expires_at, decided_at,"
    " human_verdict, late, downgrade_decision_id, model_refusal"
)

_SELECT_TASKS = f"SELECT {_TASK_COLUMNS} FROM tasks"  # noqa: S608 - constant
_IDLE_ON_CALL = (
    "SELECT r.id, r.tenants, r.role, r.on_call FROM reviewers r"
    " WHERE r.on_call AND r.disabled_at IS NULL AND r.role IN ('reviewer', 'senior')"
    " AND NOT EXISTS (SELECT 1 FROM tasks h WHERE h.assignee = r.id"
    " AND h.state = 'assigned' AND h.lock_expires_at > $1)"
    " ORDER BY r.last_assigned_at NULLS FIRST, r.id"
)

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
_QUEUE_QUERY = _QUEUE_AUDIT + _SELECT_TASKS + _QUEUE_FROM


def _task(row: asyncpg.Record) -> Task:
    return Task(
        task_id=row["task_id"],
        post_id=row["post_id"],
        policy=row["policy"],
        tenant=row["tenant"],
        lang=row["lang"],
        region=row["region"],
        decision_id=row["decision_id"],
        post_event_id=row["post_event_id"],
        content_key=row["content_key"],
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
    )


def _reviewer(row: asyncpg.Record) -> Reviewer:
    return Reviewer(row["id"], tuple(row["tenants"]), Role(row["role"]), row["on_call"])


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: str
    post_id: str
    policy: str
    tenant: str
    lang: str | None
    region: str | None
    decision_id: str
    post_event_id: str
    content_key: str
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


@dataclass(frozen=True, slots=True)
class PostText:
    post_id: str
    tenant: str
    kind: str
    text: str
    prompt: str | None
    lang: str | None = None
    region: str | None = None


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


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    kind: str
    topic: str
    key: str
    payload: bytes


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


_TASK_COLUMNS_T = ", ".join(f"t.{c.strip()}" for c in _TASK_COLUMNS.split(","))
# Items of open batches that no senior has re-reviewed yet (with their task).
_OPEN_QA_ITEMS = (
    f"SELECT i.period, i.reviewer AS first_reviewer, {_TASK_COLUMNS_T} FROM qa_items i"  # noqa: S608 - constant
    " JOIN qa_batches b ON b.period = i.period AND b.closed_at IS NULL"
    " JOIN tasks t ON t.task_id = i.task_id WHERE NOT EXISTS (SELECT 1 FROM reviews q"
    " WHERE q.task_id = i.task_id AND q.stage = 'qa')"
)


_POST_LOCK = 0x6773_7270  # advisory lock class: one post's text and task are written in turn


async def _lock_posts(conn: Conn, posts: Iterable[tuple[str, str]]) -> None:
    """Serialise writers of the same posts, each a (tenant, post_id) (text and task may arrive
    in concurrent batches or on different replicas): whoever commits second sees the other's
    row. Sorted: no deadlock."""
    # Neither a tenant nor a post_id holds a control character: the pair joins unambiguously.
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(x))"
        " FROM (SELECT DISTINCT x FROM unnest($2::text[]) AS x ORDER BY x) AS s",
        _POST_LOCK,
        sorted({f"{tenant}\x1f{post_id}" for tenant, post_id in posts}),
    )


class Tx:
    """One transaction: the state change, its audit row and its outbox entries together."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def audit(
        self,
        *,
        actor: str | None,
        action: str,
        outcome: str = "ok",
        tenant: str | None = None,
        task_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        try:
            await self.conn.execute(
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

    async def enqueue(self, kind: str, topic: str, key: str, payload: bytes) -> None:
        await self.conn.execute(
            "INSERT INTO outbox (kind, topic, key, payload) VALUES ($1, $2, $3, $4)",
            kind,
            topic,
            key,
            payload,
        )

    async def task_for_update(self, task_id: str) -> Task | None:
        row = await self.conn.fetchrow(
            _SELECT_TASKS + " WHERE task_id = $1 FOR UPDATE",
            task_id,
        )
        return _task(row) if row else None

    async def task(self, task_id: str) -> Task | None:
        row = await self.conn.fetchrow(
            _SELECT_TASKS + " WHERE task_id = $1",
            task_id,
        )
        return _task(row) if row else None

    async def post_text(self, post_id: str, tenant: str) -> PostText | None:
        row = await self.conn.fetchrow(
            "SELECT post_id, tenant, kind, text, prompt, lang, region FROM post_texts"
            " WHERE post_id = $1 AND tenant = $2",
            post_id,
            tenant,
        )
        return PostText(**dict(row)) if row else None

    async def held_by(self, reviewer: str, now: datetime) -> Task | None:
        row = await self.conn.fetchrow(
            _SELECT_TASKS + " WHERE assignee = $1 AND state = 'assigned'"
            " AND lock_expires_at > $2 ORDER BY deadline LIMIT 1",
            reviewer,
            now,
        )
        return _task(row) if row else None

    async def lock_reviewer(self, reviewer_id: str) -> bool:
        """Lock the reviewer's row for this transaction (their claims take turns); False when
        the reviewer does not exist or is disabled."""
        row = await self.conn.fetchrow(
            "SELECT 1 FROM reviewers WHERE id = $1 AND disabled_at IS NULL FOR UPDATE",
            reviewer_id,
        )
        return row is not None

    async def held_count(self, reviewer: str) -> int:
        """Tasks the reviewer holds, expired locks included: what the claim limit counts."""
        value = await self.conn.fetchval(
            "SELECT count(*) FROM tasks WHERE assignee = $1 AND state = 'assigned'", reviewer
        )
        return int(value or 0)

    async def next_claimable(self, tenants: Sequence[str], now: datetime) -> Task | None:
        """The open task with the earliest deadline nobody holds, locked for this transaction;
        tasks other transactions are claiming are skipped, never waited for."""
        every = "*" in tenants
        row = await self.conn.fetchrow(
            _SELECT_TASKS + " WHERE state <> 'decided' AND ($1 OR tenant = ANY($2::text[]))"
            " AND (state = 'pending' OR lock_expires_at <= $3)"
            " ORDER BY deadline LIMIT 1 FOR UPDATE SKIP LOCKED",
            every,
            list(tenants),
            now,
        )
        return _task(row) if row else None

    async def assign(self, task_id: str, reviewer: str, until: datetime, now: datetime) -> None:
        """Hand the task to the reviewer; `ClaimLimitReached` when the trigger refuses it (the
        transaction is then aborted)."""
        try:
            await self.conn.execute(
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
        await self.conn.execute(
            "UPDATE reviewers SET last_assigned_at = $2 WHERE id = $1", reviewer, now
        )

    async def unassign(self, task_id: str) -> None:
        await self.conn.execute(
            "UPDATE tasks SET state = 'pending', assignee = NULL, lock_expires_at = NULL"
            " WHERE task_id = $1",
            task_id,
        )

    async def expired_locks(
        self, now: datetime, limit: int, *, assignee: str | None = None
    ) -> list[Task]:
        """Assigned tasks whose lock ran out (of one reviewer when `assignee` is given)."""
        rows = await self.conn.fetch(
            _SELECT_TASKS + " WHERE state = 'assigned'"
            " AND lock_expires_at <= $1 AND ($3::text IS NULL OR assignee = $3)"
            " ORDER BY lock_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
            assignee,
        )
        return [_task(r) for r in rows]

    async def held_tasks(self, reviewer: str) -> list[Task]:
        """Every task the reviewer holds, live or expired lock, locked for this transaction."""
        rows = await self.conn.fetch(
            _SELECT_TASKS + " WHERE assignee = $1 AND state = 'assigned' ORDER BY task_id"
            " FOR UPDATE",
            reviewer,
        )
        return [_task(r) for r in rows]

    async def has_reviewer(self, reviewer_id: str) -> bool:
        return bool(await self.conn.fetchval("SELECT 1 FROM reviewers WHERE id = $1", reviewer_id))

    async def set_disabled(self, reviewer_id: str, disabled_at: datetime | None) -> bool:
        """Disable (a time) or enable (None) a reviewer; False when there is no such reviewer."""
        status = await self.conn.execute(
            "UPDATE reviewers SET disabled_at = $2 WHERE id = $1", reviewer_id, disabled_at
        )
        return bool(status == "UPDATE 1")

    async def revoke_credentials(self, reviewer_id: str) -> tuple[int, int]:
        """Delete every token and console session of the reviewer: (tokens, sessions)."""
        tokens = await self.conn.execute(
            "DELETE FROM api_tokens WHERE reviewer_id = $1", reviewer_id
        )
        sessions = await self.conn.execute(
            "DELETE FROM console_sessions WHERE reviewer_id = $1", reviewer_id
        )
        return int(tokens.split()[-1]), int(sessions.split()[-1])

    async def idle_on_call(self, now: datetime) -> list[Reviewer]:
        """On-call reviewers (not admins) holding no live claim, assigned longest ago first."""
        rows = await self.conn.fetch(_IDLE_ON_CALL, now)
        return [_reviewer(r) for r in rows]

    async def lock_idle_reviewer(self, reviewer_id: str, now: datetime) -> bool:
        """Lock the reviewer's row for this transaction if they are still idle and on call."""
        row = await self.conn.fetchrow(
            _IDLE_ON_CALL.replace("ORDER BY", "AND r.id = $2 ORDER BY") + " FOR UPDATE SKIP LOCKED",
            now,
            reviewer_id,
        )
        return row is not None

    async def mark_decided(self, task_id: str, verdict: Verdict, late: bool, now: datetime) -> None:
        await self.conn.execute(
            "UPDATE tasks SET state = 'decided', decided_at = $2, human_verdict = $3, late = $4,"
            " lock_expires_at = NULL WHERE task_id = $1",
            task_id,
            now,
            verdict.value,
            late,
        )

    async def insert_review(
        self, review: Review, *, action: Action | None = None, human_decision_id: str | None = None
    ) -> bool:
        """Store a review as published; `action` and `human_decision_id`: what a first review
        actioned. False when this review exists already (a re-submitted form)."""
        status = await self.conn.execute(
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

    async def first_review_verdict(self, task_id: str) -> Verdict | None:
        value = await self.conn.fetchval(
            "SELECT verdict FROM reviews WHERE task_id = $1 AND stage = 'first'", task_id
        )
        return Verdict(value) if value else None

    # --- QA audits ---------------------------------------------------------------------------
    async def first_reviewer(self, task_id: str) -> str | None:
        value = await self.conn.fetchval(
            "SELECT reviewer FROM reviews WHERE task_id = $1 AND stage = 'first'", task_id
        )
        return str(value) if value is not None else None

    async def insert_qa_batch(
        self, period: str, since: datetime, until: datetime, size: int, bar: float, now: datetime
    ) -> bool:
        """False when the period was sampled already (by this or another replica): the
        primary key is what makes sampling happen once per period."""
        status = await self.conn.execute(
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

    async def qa_candidates(self, since: datetime, until: datetime) -> list[QaCandidate]:
        """First reviews given in [since, until) whose task no senior has re-reviewed yet and
        no batch holds."""
        rows = await self.conn.fetch(
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

    async def insert_qa_items(self, period: str, items: Sequence[QaCandidate]) -> None:
        await self.conn.executemany(
            "INSERT INTO qa_items (period, task_id, tenant, reviewer) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            [(period, i.task_id, i.tenant, i.reviewer) for i in items],
        )

    async def open_qa_batches(self, ended_by: datetime) -> list[str]:
        """Batches not closed yet whose reviews ended by `ended_by`, locked for closing."""
        rows = await self.conn.fetch(
            "SELECT period FROM qa_batches WHERE closed_at IS NULL AND until <= $1"
            " ORDER BY until FOR UPDATE",
            ended_by,
        )
        return [r["period"] for r in rows]

    async def lock_open_qa_batch_of(self, task_id: str) -> str | None:
        """The open batch holding this task, locked: QA decisions of one batch take turns,
        so the one deciding its last item sees all the others and closes it."""
        value = await self.conn.fetchval(
            "SELECT b.period FROM qa_batches b JOIN qa_items i ON i.period = b.period"
            " WHERE i.task_id = $1 AND b.closed_at IS NULL ORDER BY b.period LIMIT 1"
            " FOR UPDATE OF b",
            task_id,
        )
        return str(value) if value is not None else None

    async def qa_undecided(self, period: str) -> int:
        value = await self.conn.fetchval(
            "SELECT count(*) FROM qa_items i WHERE i.period = $1 AND NOT EXISTS"
            " (SELECT 1 FROM reviews q WHERE q.task_id = i.task_id AND q.stage = 'qa')",
            period,
        )
        return int(value or 0)

    async def qa_progress(self, period: str, tenants: Sequence[str]) -> tuple[int, int]:
        """(items, items without a QA review) of the batch, over `tenants`."""
        row = await self.conn.fetchrow(
            "SELECT count(*) AS items, count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM"
            " reviews q WHERE q.task_id = i.task_id AND q.stage = 'qa')) AS undecided"
            " FROM qa_items i WHERE i.period = $1 AND ($2 OR i.tenant = ANY($3::text[]))",
            period,
            "*" in tenants,
            list(tenants),
        )
        assert row is not None
        return int(row["items"]), int(row["undecided"])

    async def qa_scores(
        self, period: str, tenants: Sequence[str] = ("*",)
    ) -> dict[str, tuple[int, int]]:
        """First reviewer → (QA re-reviews agreeing with their label, re-reviews) over the
        batch's items of `tenants`. Every senior's re-review of an item counts once."""
        rows = await self.conn.fetch(
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

    async def close_qa_batch(
        self, period: str, agreed: int, compared: int, alert_id: str | None, now: datetime
    ) -> None:
        await self.conn.execute(
            "UPDATE qa_batches SET closed_at = $2, agreed = $3, compared = $4, alert_id = $5"
            " WHERE period = $1",
            period,
            now,
            agreed,
            compared,
            alert_id,
        )

    async def qa_batch(self, period: str) -> QaBatch | None:
        row = await self.conn.fetchrow(
            "SELECT b.*, (SELECT count(*) FROM qa_items i WHERE i.period = b.period) AS items"
            " FROM qa_batches b WHERE period = $1",
            period,
        )
        return _qa_batch(row) if row else None

    async def latest_qa_batch(self) -> QaBatch | None:
        row = await self.conn.fetchrow(
            "SELECT b.*, (SELECT count(*) FROM qa_items i WHERE i.period = b.period) AS items"
            " FROM qa_batches b ORDER BY period DESC LIMIT 1"
        )
        return _qa_batch(row) if row else None

    async def qa_queue(self, reviewer: str, tenants: Sequence[str], limit: int) -> list[QaEntry]:
        """Open batches' items nobody has re-reviewed, of the senior's tenants, never their
        own first reviews; oldest period first, then a stable order."""
        rows = await self.conn.fetch(
            _OPEN_QA_ITEMS + " AND ($1 OR i.tenant = ANY($2::text[])) AND i.reviewer <> $3"
            " ORDER BY i.period, i.task_id LIMIT $4",
            "*" in tenants,
            list(tenants),
            reviewer,
            limit,
        )
        return [QaEntry(r["period"], _task(r), r["first_reviewer"]) for r in rows]

    async def open_qa_item(self, task_id: str) -> QaEntry | None:
        """The task as an item of an open batch that no senior has re-reviewed yet."""
        row = await self.conn.fetchrow(
            _OPEN_QA_ITEMS + " AND i.task_id = $1 ORDER BY i.period LIMIT 1",
            task_id,
        )
        return QaEntry(row["period"], _task(row), row["first_reviewer"]) if row else None


class ReviewStore:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def open(cls, settings: Settings, *, schema: str | None = None) -> ReviewStore:
        name = schema or settings.database.review_schema
        dsn = settings.database.url.get_secret_value()
        conn = await asyncpg.connect(dsn)
        try:
            applied = await apply_migrations(conn, name)
        finally:
            await conn.close()
        if applied:
            log.info("review store migrated", extra={"schema": name, "applied": applied})
        pool = await asyncpg.create_pool(
            dsn,
            min_size=2,
            max_size=settings.database.pool_max,
            server_settings={"search_path": name},
        )
        return cls(pool, name)

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

    # --- reviewers and credentials -------------------------------------------------------
    async def put_reviewer(
        self, reviewer: Reviewer, password_hash: str, *, actor: str | None
    ) -> tuple[int, int]:
        """Create or update a reviewer with a new password. An existing reviewer's tokens and
        console sessions are deleted in the same transaction (a reset password takes back
        what the old one gave); returns how many (tokens, sessions) were revoked."""
        async with self.transaction() as tx:
            await tx.conn.execute(
                "INSERT INTO reviewers (id, tenants, role, on_call, password_hash)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET"
                " tenants = EXCLUDED.tenants, role = EXCLUDED.role, on_call = EXCLUDED.on_call,"
                " password_hash = EXCLUDED.password_hash",
                reviewer.id,
                list(reviewer.tenants),
                reviewer.role.value,
                reviewer.on_call,
                password_hash,
            )
            revoked = await tx.revoke_credentials(reviewer.id)
            await tx.audit(
                actor=actor,
                action="reviewer.put",
                detail={
                    "reviewer": reviewer.id,
                    "role": reviewer.role.value,
                    "tenants": list(reviewer.tenants),
                    "on_call": reviewer.on_call,
                    "revoked_tokens": revoked[0],
                    "revoked_sessions": revoked[1],
                },
            )
        return revoked

    async def reviewer_credentials(self, reviewer_id: str) -> tuple[Reviewer, str] | None:
        """The reviewer and their password hash; None when unknown or disabled."""
        row = await self._pool.fetchrow(
            "SELECT id, tenants, role, on_call, password_hash FROM reviewers"
            " WHERE id = $1 AND disabled_at IS NULL",
            reviewer_id,
        )
        return (_reviewer(row), row["password_hash"]) if row else None

    async def store_token(self, reviewer_id: str, digest: str, expires: datetime) -> None:
        """Store a token's hash; the reviewer's expired tokens go in the same transaction."""
        async with self.transaction() as tx:
            await tx.conn.execute(
                "DELETE FROM api_tokens WHERE reviewer_id = $1 AND expires_at <= now()",
                reviewer_id,
            )
            await tx.conn.execute(
                "INSERT INTO api_tokens (token_hash, reviewer_id, expires_at) VALUES ($1, $2, $3)",
                digest,
                reviewer_id,
                expires,
            )
            await tx.audit(actor=reviewer_id, action="token.issue")

    async def token_owner(self, digest: str, now: datetime) -> Reviewer | None:
        """The reviewer a token hash belongs to, while the token is unexpired and the
        reviewer enabled. Read on every request: a revocation holds from the next one."""
        row = await self._pool.fetchrow(
            "SELECT r.id, r.tenants, r.role, r.on_call FROM api_tokens t"
            " JOIN reviewers r ON r.id = t.reviewer_id WHERE t.token_hash = $1"
            " AND t.expires_at > $2 AND r.disabled_at IS NULL",
            digest,
            now,
        )
        return _reviewer(row) if row else None

    async def revoke_token(self, digest: str, *, actor: str | None) -> str | None:
        """Delete one token; the reviewer it belonged to, or None when there was none."""
        async with self.transaction() as tx:
            owner = await tx.conn.fetchval(
                "DELETE FROM api_tokens WHERE token_hash = $1 RETURNING reviewer_id", digest
            )
            if owner is not None:
                await tx.audit(actor=actor, action="token.revoke", detail={"reviewer": owner})
        return str(owner) if owner is not None else None

    async def store_session(self, reviewer_id: str, digest: str, expires: datetime) -> None:
        """Open a console session (its id's hash) with its audit row; the reviewer's
        expired sessions go in the same transaction."""
        async with self.transaction() as tx:
            await tx.conn.execute(
                "DELETE FROM console_sessions WHERE reviewer_id = $1 AND expires_at <= now()",
                reviewer_id,
            )
            await tx.conn.execute(
                "INSERT INTO console_sessions (session_hash, reviewer_id, expires_at)"
                " VALUES ($1, $2, $3)",
                digest,
                reviewer_id,
                expires,
            )
            await tx.audit(actor=reviewer_id, action="session.open")

    async def session_owner(self, digest: str, reviewer_id: str, now: datetime) -> Reviewer | None:
        """The reviewer of a live console session (not logged out, not expired, enabled)."""
        row = await self._pool.fetchrow(
            "SELECT r.id, r.tenants, r.role, r.on_call FROM console_sessions s"
            " JOIN reviewers r ON r.id = s.reviewer_id WHERE s.session_hash = $1"
            " AND s.reviewer_id = $2 AND s.expires_at > $3 AND r.disabled_at IS NULL",
            digest,
            reviewer_id,
            now,
        )
        return _reviewer(row) if row else None

    async def end_session(self, digest: str, reviewer_id: str) -> None:
        """Log out: the session row goes, with its audit row."""
        async with self.transaction() as tx:
            await tx.conn.execute(
                "DELETE FROM console_sessions WHERE session_hash = $1 AND reviewer_id = $2",
                digest,
                reviewer_id,
            )
            await tx.audit(actor=reviewer_id, action="logout")

    async def purge_credentials(self, now: datetime) -> tuple[int, int]:
        """Delete expired tokens and sessions: (tokens, sessions)."""
        async with self.transaction() as tx:
            tokens = await tx.conn.execute("DELETE FROM api_tokens WHERE expires_at <= $1", now)
            sessions = await tx.conn.execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1", now
            )
        return int(tokens.split()[-1]), int(sessions.split()[-1])

    async def set_claim_limit(self, max_claims: int) -> None:
        """The number of tasks one reviewer may hold, enforced by a trigger on `tasks`."""
        await self._pool.execute("UPDATE claim_limit SET max_claims = $1", max_claims)

    async def set_on_call(self, reviewer_id: str, on_call: bool) -> None:
        async with self.transaction() as tx:
            await tx.conn.execute(
                "UPDATE reviewers SET on_call = $2 WHERE id = $1", reviewer_id, on_call
            )
            await tx.audit(actor=reviewer_id, action="reviewer.on_call", detail={"on": on_call})

    async def audit_alone(self, **fields: Any) -> None:
        """An audit row for an access that changes nothing (a denied request)."""
        async with self.transaction() as tx:
            await tx.audit(**fields)

    # --- what the consumers write ------------------------------------------------------------
    async def save_post_texts(self, posts: Sequence[PostText]) -> None:
        if not posts:
            return
        async with self.transaction() as tx:
            await _lock_posts(tx.conn, [(p.tenant, p.post_id) for p in posts])
            await tx.conn.executemany(
                "INSERT INTO post_texts (post_id, tenant, kind, text, prompt, lang, region)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, post_id) DO NOTHING",
                [(p.post_id, p.tenant, p.kind, p.text, p.prompt, p.lang, p.region) for p in posts],
            )
            # Tasks created before their post arrived learn its language and region now.
            await tx.conn.execute(
                "UPDATE tasks t SET lang = COALESCE(t.lang, p.lang),"
                " region = COALESCE(t.region, p.region) FROM post_texts p"
                " WHERE p.post_id = t.post_id AND p.tenant = t.tenant"
                " AND p.post_id = ANY($1::text[]) AND (t.lang IS NULL OR t.region IS NULL)",
                [p.post_id for p in posts],
            )

    async def create_tasks(self, tasks: Sequence[NewTask]) -> int:
        """Insert the tasks not there yet (unique per tenant, post and policy); returns how many
        were new. An SLA mark that arrived first is applied to its task."""
        if not tasks:
            return 0
        async with self.transaction() as tx:
            await _lock_posts(tx.conn, [(t.tenant, t.post_id) for t in tasks])
            rows = await tx.conn.fetch(
                "INSERT INTO tasks (task_id, post_id, policy, tenant, lang, region, decision_id,"
                " post_event_id, content_key, model_verdict, categories, confidence, reason,"
                " model, adapter, domain_tags, created_at, deadline, warn_at, assign_by, sla,"
                " downgrade_decision_id, traceparent, model_refusal)"
                " SELECT x.task_id, x.post_id, x.policy, x.tenant, COALESCE(x.lang, p.lang),"
                " COALESCE(x.region, p.region),"
                " x.decision_id, x.post_event_id, x.content_key, x.model_verdict,"
                " ARRAY(SELECT jsonb_array_elements_text(x.categories::jsonb)), x.confidence,"
                " x.reason, x.model, x.adapter,"
                " ARRAY(SELECT jsonb_array_elements_text(x.domain_tags::jsonb)),"
                " x.created_at, x.deadline, x.warn_at, x.assign_by,"
                " COALESCE(m.sla, 'ok'), m.downgrade_decision_id, x.traceparent, x.refusal"
                " FROM unnest("
                " $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
                " $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
                " $12::float8[], $13::text[], $14::text[], $15::text[], $16::text[],"
                " $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::timestamptz[],"
                " $21::text[], $22::bool[]"
                " ) AS x(task_id, post_id, policy, tenant, lang, region, decision_id,"
                " post_event_id, content_key, model_verdict, categories, confidence, reason,"
                " model, adapter, domain_tags, created_at, deadline, warn_at, assign_by,"
                " traceparent, refusal)"
                " LEFT JOIN sla_marks m ON m.decision_id = x.decision_id"
                " LEFT JOIN post_texts p ON p.post_id = x.post_id AND p.tenant = x.tenant"
                " ON CONFLICT (tenant, post_id, policy) DO NOTHING RETURNING task_id",
                [t.task_id for t in tasks],
                [t.post_id for t in tasks],
                [t.policy for t in tasks],
                [t.tenant for t in tasks],
                [t.lang for t in tasks],
                [t.region for t in tasks],
                [t.decision_id for t in tasks],
                [t.post_event_id for t in tasks],
                [t.content_key for t in tasks],
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
            )
        return len(rows)

    async def mark_sla(self, marks: Sequence[SlaMark]) -> int:
        """Apply SLA warnings/expiries to their tasks (never downgrading expired to warning);
        marks for tasks not created yet wait in `sla_marks`. Returns tasks updated."""
        updated = 0
        async with self.transaction() as tx:
            for mark in marks:
                status = await tx.conn.execute(
                    "UPDATE tasks SET sla = $2,"
                    " downgrade_decision_id = COALESCE($3, downgrade_decision_id)"
                    " WHERE decision_id = $1 AND sla <> 'expired'"
                    " AND NOT (sla = 'warning' AND $2 = 'warning')",
                    mark.decision_id,
                    mark.sla.value,
                    mark.downgrade_decision_id,
                )
                updated += int(status.split()[-1])
                await tx.conn.execute(
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

    async def purge_post_texts(self, before: datetime) -> int:
        status = await self._pool.execute(
            "DELETE FROM post_texts p WHERE received_at < $1"
            " AND NOT EXISTS (SELECT 1 FROM tasks t"
            " WHERE t.tenant = p.tenant AND t.post_id = p.post_id)",
            before,
        )
        return int(status.split()[-1])

    # --- reads -------------------------------------------------------------------------------
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
            rows = await self._pool.fetch(
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
        return [_task(r) for r in rows]

    async def stats(self, tenants: Sequence[str], now: datetime) -> QueueStats:
        every = "*" in tenants
        row = await self._pool.fetchrow(
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

    async def gauges(self) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        """Open tasks per tenant, and (compared, agreed) QA re-reviews per tenant."""
        depth = await self._pool.fetch(
            "SELECT tenant, count(*) AS n FROM tasks WHERE state <> 'decided' GROUP BY tenant"
        )
        qa = await self._pool.fetch(
            "SELECT t.tenant, count(*) AS compared,"
            " count(*) FILTER (WHERE f.verdict = q.verdict) AS agreed FROM reviews q"
            " JOIN reviews f ON f.task_id = q.task_id AND f.stage = 'first'"
            " JOIN tasks t ON t.task_id = q.task_id WHERE q.stage = 'qa' GROUP BY t.tenant"
        )
        return (
            {r["tenant"]: r["n"] for r in depth},
            {r["tenant"]: (r["compared"], r["agreed"]) for r in qa},
        )

    async def agreement_pairs(self, tenants: Sequence[str]) -> list[tuple[Verdict, Verdict]]:
        every = "*" in tenants
        rows = await self._pool.fetch(
            "SELECT f.verdict AS first, q.verdict AS qa FROM reviews q"
            " JOIN reviews f ON f.task_id = q.task_id AND f.stage = 'first'"
            " JOIN tasks t ON t.task_id = q.task_id"
            " WHERE q.stage = 'qa' AND ($1 OR t.tenant = ANY($2::text[]))",
            every,
            list(tenants),
        )
        return [(Verdict(r["first"]), Verdict(r["qa"])) for r in rows]

    async def reviews_of(self, task_id: str) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT review_id, stage, reviewer, outcome, verdict, categories, reason, tags, late,"
            " action, human_decision_id, reviewed_at FROM reviews WHERE task_id = $1"
            " ORDER BY reviewed_at",
            task_id,
        )
        return [dict(r) for r in rows]

    # --- outbox ------------------------------------------------------------------------------
    async def unsent(self, limit: int) -> list[OutboxItem]:
        rows = await self._pool.fetch(
            "SELECT id, kind, topic, key, payload FROM outbox WHERE sent_at IS NULL"
            " ORDER BY id LIMIT $1",
            limit,
        )
        return [OutboxItem(r["id"], r["kind"], r["topic"], r["key"], r["payload"]) for r in rows]

    async def mark_sent(self, ids: Sequence[int], now: datetime) -> None:
        if ids:
            await self._pool.execute(
                "UPDATE outbox SET sent_at = $2 WHERE id = ANY($1::bigint[])", list(ids), now
            )
