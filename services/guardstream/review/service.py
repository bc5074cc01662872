"""The review workflow: authentication, tenant-scoped reads, claims, decisions, QA.

Every method that touches a task runs one transaction holding the change, its audit row and
the events it publishes (outbox); the relay sends those after commit. A task of a tenant the
reviewer may not see is answered as "not found" (no existence leak) and audited as denied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import (
    AssignmentEvent,
    Decision,
    Kind,
    Review,
    ReviewAssignment,
    ReviewStage,
    Verdict,
    utcnow,
)
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.topics import Topic
from guardstream.policy import PolicyPack, PolicyRegistry
from guardstream.review import auth
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import (
    Agreement,
    Permission,
    Reviewer,
    SlaState,
    Submission,
    Task,
    TaskState,
    agreement,
    assignment,
    blind_form,
    human_decision,
    human_verdict_entry,
    review_event,
    validate_submission,
)
from guardstream.review.qa_period import (
    Cadence,
    QaPeriod,
    below_bar,
    low_agreement_alert,
    previous_period,
    spread,
)
from guardstream.review.sample import from_review
from guardstream.review.shield import DeniedAudit
from guardstream.review.store import (
    ClaimLimitReached,
    PostText,
    QaBatch,
    QaCandidate,
    QaEntry,
    QueueFilter,
    QueueStats,
    ReviewStore,
    Tx,
)
from guardstream.verdict.cache import human_verdict_key
from guardstream.verdict.decisions import ACTION_TOPIC

log = logging.getLogger(__name__)


class ReviewError(PermanentError):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(ReviewError):
    status = 401


class Forbidden(ReviewError):
    status = 403


class NotFound(ReviewError):
    status = 404


class Conflict(ReviewError):
    status = 409


@dataclass(frozen=True, slots=True)
class TaskView:
    task: Task
    text: PostText | None  # None: not allowed to see it, or the post has not arrived


@dataclass(frozen=True, slots=True)
class Disabled:
    """What disabling a reviewer took back."""

    tokens: int
    sessions: int
    released: int  # tasks they held, back in the queue


@dataclass(frozen=True, slots=True)
class Decided:
    task: Task
    review_id: str
    decision_id: str | None  # the human decision (first stage only)
    action: str | None
    late: bool


class ReviewService:
    def __init__(
        self,
        store: ReviewStore,
        policies: PolicyRegistry,
        *,
        tags: Sequence[str],
        lock_s: int,
        token_ttl_s: int,
        max_claims: int = 1,
        clock: Callable[[], datetime] = utcnow,
        after_commit: Callable[[], None] | None = None,
        qa_cadence: Cadence = "monthly",
        qa_sample_size: int = 100,
        qa_min_agreement: float = 0.9,
        hashes: auth.HashPool | None = None,
        denied_audit_per_s: float = 10.0,
    ) -> None:
        self.store = store
        # Refusals a stranger can cause at will (no or a made-up token, no session) are
        # audited at a bounded rate; the rest are counted into the next row written.
        self.refusals = DeniedAudit(store.audit_alone, denied_audit_per_s)
        self.hashes = hashes or auth.HashPool(workers=1, queue=4)
        self.qa_cadence: Cadence = qa_cadence
        self.qa_sample_size = qa_sample_size
        self.qa_min_agreement = qa_min_agreement
        self.policies = policies
        self.tags = tuple(tags)
        self._lock = timedelta(seconds=lock_s)
        self.max_claims = max_claims  # the database enforces its own copy (claim_limit)
        self._token_ttl = timedelta(seconds=token_ttl_s)
        self.now = clock
        # Tells the outbox relay a committed change queued events (it sends them at once,
        # without the request waiting for the broker).
        self._after_commit = after_commit
        # Queue depth and average response time, per tenant set, at most this old: counting
        # 100k open tasks on every page view would cost more than the page itself.
        self._stats: dict[tuple[str, ...], tuple[float, QueueStats]] = {}
        self.stats_max_age_s = 1.0
        self._refreshing: dict[tuple[str, ...], asyncio.Future[QueueStats]] = {}

    async def _sent(self) -> None:
        if self._after_commit is not None:
            self._after_commit()

    # --- authentication ----------------------------------------------------------------------
    async def login(self, reviewer_id: str, password: str) -> Reviewer:
        found = await self.store.reviewer_credentials(reviewer_id)
        # Off the event loop; an unknown id costs the same hash work as a wrong password.
        if not await self.hashes.verify(password, found[1] if found else None) or found is None:
            await self.store.audit_alone(
                actor=None, action="login", outcome="denied", detail={"reviewer": reviewer_id}
            )
            raise Unauthenticated("unknown reviewer or wrong password")
        await self.store.audit_alone(actor=reviewer_id, action="login")
        return found[0]

    async def issue_token(self, reviewer: Reviewer) -> tuple[str, datetime]:
        token = auth.new_token()
        expires = self.now() + self._token_ttl
        await self.store.store_token(reviewer.id, auth.token_hash(token), expires)
        return token, expires

    async def from_token(self, token: str | None, *, path: str) -> Reviewer:
        if not token:
            await self.refusals.record("api", {"path": path, "why": "none"})
            review_metrics.denied.add(1, {"reason": "no_token"})
            raise Unauthenticated("missing bearer token")
        # Read on every request, never remembered: a revoked token, a changed password or a
        # disabled reviewer is refused from the next request on, on every replica.
        reviewer = await self.store.token_owner(auth.token_hash(token), self.now())
        if reviewer is None:
            await self.refusals.record("api", {"path": path, "why": "invalid or expired token"})
            review_metrics.denied.add(1, {"reason": "bad_token"})
            raise Unauthenticated("invalid or expired token")
        return reviewer

    async def open_session(self, reviewer: Reviewer, session: auth.Session) -> None:
        """Record a console session issued at login (logout and revocation delete it)."""
        expires = datetime.fromtimestamp(session.expires, tz=UTC)
        await self.store.store_session(reviewer.id, auth.token_hash(session.sid), expires)

    async def from_session(self, session: auth.Session | None) -> Reviewer | None:
        """The reviewer of a signed session cookie while its session is open on the server."""
        if session is None:
            return None
        return await self.store.session_owner(
            auth.token_hash(session.sid), session.reviewer, self.now()
        )

    async def logout(self, reviewer: Reviewer, session: auth.Session) -> None:
        await self.store.end_session(auth.token_hash(session.sid), reviewer.id)

    # --- credential lifecycle (the `guardstream review` admin commands) ----------------------
    async def revoke_token(self, token: str, *, actor: str | None) -> str | None:
        """Delete one API token; the reviewer it belonged to, or None when it is unknown."""
        return await self.store.revoke_token(auth.token_hash(token), actor=actor)

    async def revoke_all(self, reviewer_id: str, *, actor: str | None) -> tuple[int, int] | None:
        """Delete every token and session of a reviewer: (tokens, sessions), None if unknown."""
        async with self.store.transaction() as tx:
            if not await tx.has_reviewer(reviewer_id):
                return None
            revoked = await tx.revoke_credentials(reviewer_id)
            await tx.audit(
                actor=actor,
                action="reviewer.revoke",
                detail={"reviewer": reviewer_id, "tokens": revoked[0], "sessions": revoked[1]},
            )
        return revoked

    async def disable_reviewer(self, reviewer_id: str, *, actor: str | None) -> Disabled | None:
        """Disable a reviewer at once: no login, every token and session deleted, the tasks
        they hold back in the queue (with their `released` events), one transaction.
        None when there is no such reviewer."""
        now = self.now()
        async with self.store.transaction() as tx:
            if not await tx.set_disabled(reviewer_id, now):
                return None
            tokens, sessions = await tx.revoke_credentials(reviewer_id)
            held = await tx.held_tasks(reviewer_id)
            for task in held:
                await tx.unassign(task.task_id)
                await self._publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
            await tx.audit(
                actor=actor,
                action="reviewer.disable",
                detail={
                    "reviewer": reviewer_id,
                    "tokens": tokens,
                    "sessions": sessions,
                    "released": [t.task_id for t in held],
                },
            )
        if held:
            await self._sent()
        return Disabled(tokens, sessions, len(held))

    async def enable_reviewer(self, reviewer_id: str, *, actor: str | None) -> bool:
        """Let a disabled reviewer log in again (their old credentials stay revoked)."""
        async with self.store.transaction() as tx:
            if not await tx.set_disabled(reviewer_id, None):
                return False
            await tx.audit(actor=actor, action="reviewer.enable", detail={"reviewer": reviewer_id})
        return True

    # --- reads -------------------------------------------------------------------------------
    async def queue(
        self, reviewer: Reviewer, filters: QueueFilter, limit: int
    ) -> tuple[list[Task], QueueStats]:
        self._require(reviewer, Permission.READ_QUEUE)
        if filters.tenant is not None and not reviewer.sees(filters.tenant):
            await self.store.audit_alone(
                actor=reviewer.id, action="queue", outcome="denied", tenant=filters.tenant
            )
            raise Forbidden("not a tenant of yours")
        tasks = await self.store.queue(reviewer.id, reviewer.tenants, filters, limit)
        return tasks, await self.stats(reviewer)

    async def stats(self, reviewer: Reviewer) -> QueueStats:
        """Queue depth, expired count and average response time of the reviewer's tenants.

        Served from a per-tenant-set copy at most `stats_max_age_s` old; when it is older, one
        request refreshes it while the others keep the previous copy (no stampede of counts).
        """
        self._require(reviewer, Permission.READ_QUEUE)
        key = tuple(sorted(reviewer.tenants))
        cached = self._stats.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.stats_max_age_s:
            return cached[1]
        refreshing = self._refreshing.get(key)
        if refreshing is None:
            refreshing = asyncio.ensure_future(self._refresh_stats(key, reviewer.tenants))
            self._refreshing[key] = refreshing
        if cached is not None:
            return cached[1]
        return await asyncio.shield(refreshing)

    async def _refresh_stats(self, key: tuple[str, ...], tenants: Sequence[str]) -> QueueStats:
        try:
            fresh = await self.store.stats(tenants, self.now())
            self._stats[key] = (time.monotonic(), fresh)
            return fresh
        finally:
            self._refreshing.pop(key, None)

    async def view(self, reviewer: Reviewer, task_id: str) -> TaskView:
        self._require(reviewer, Permission.READ_QUEUE)
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.read")
            if task.human_verdict is not None and reviewer.may(Permission.QA):
                # A task waiting in the QA queue stays blind for seniors everywhere, not only
                # on the QA page: its first label shows once a senior has re-reviewed it.
                entry = await tx.open_qa_item(task.task_id)
                if entry is not None and entry.first_reviewer != reviewer.id:
                    task = blinded(entry).task
            text = None
            if reviewer.may(Permission.READ_TEXT):
                text = await tx.post_text(task.post_id, task.tenant)
            await tx.audit(
                actor=reviewer.id,
                action="task.read",
                tenant=task.tenant,
                task_id=task.task_id,
                detail={"text": text is not None},
            )
        return TaskView(task, text)

    async def agreement(self, reviewer: Reviewer) -> Agreement:
        self._require(reviewer, Permission.QA)
        return agreement(await self.store.agreement_pairs(reviewer.tenants))

    # --- claims ------------------------------------------------------------------------------
    async def claim(self, reviewer: Reviewer) -> Task | None:
        """The open task with the earliest deadline, while the reviewer holds fewer than
        `max_claims` tasks; at the limit (or with nothing left to claim), the task they hold
        with the earliest deadline. The reviewer's row is locked first, so one reviewer's
        concurrent claims take turns; their own expired locks are released here. The limit
        itself is the database's (a trigger on `tasks`), whatever the writer."""
        self._require(reviewer, Permission.DECIDE)
        now = self.now()
        try:
            async with self.store.transaction() as tx:
                if not await tx.lock_reviewer(reviewer.id):
                    raise Unauthenticated("this reviewer is disabled")
                for gone in await tx.expired_locks(now, 100, assignee=reviewer.id):
                    await tx.unassign(gone.task_id)
                    await self._publish(tx, assignment(gone, AssignmentEvent.RELEASED, None, now))
                held = await tx.held_by(reviewer.id, now)
                task = None
                if held is None or await tx.held_count(reviewer.id) < self.max_claims:
                    task = await tx.next_claimable(reviewer.tenants, now)
                if task is None:
                    await tx.audit(
                        actor=reviewer.id,
                        action="task.claim",
                        tenant=held.tenant if held else None,
                        task_id=held.task_id if held else None,
                        detail={"held": True} if held else {"empty": True},
                    )
                    return held
                await self._assign(tx, task, reviewer.id, now, actor=reviewer.id, how="claim")
        except ClaimLimitReached as exc:
            await self.store.audit_alone(
                actor=reviewer.id, action="task.claim", outcome="rejected", detail={"why": str(exc)}
            )
            raise Conflict("you hold as many tasks as you may: decide or release one") from None
        await self._sent()
        return await self._reload(task.task_id)

    async def release(self, reviewer: Reviewer, task_id: str) -> Task:
        self._require(reviewer, Permission.DECIDE)
        now = self.now()
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.release", lock=True)
            if task.state is not TaskState.ASSIGNED or task.assignee != reviewer.id:
                raise Conflict("you do not hold this task")
            await tx.unassign(task.task_id)
            await self._publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
            await tx.audit(
                actor=reviewer.id, action="task.release", tenant=task.tenant, task_id=task.task_id
            )
        await self._sent()
        return await self._reload(task_id)

    async def _assign(
        self, tx: Tx, task: Task, reviewer: str, now: datetime, *, actor: str | None, how: str
    ) -> None:
        if task.state is TaskState.ASSIGNED and task.assignee and task.assignee != reviewer:
            # Its lock expired: the previous holder loses it first.
            await self._publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
        await tx.assign(task.task_id, reviewer, now + self._lock, now)
        await self._publish(tx, assignment(task, AssignmentEvent.ASSIGNED, reviewer, now))
        await tx.audit(
            actor=actor,
            action=f"task.{how}",
            tenant=task.tenant,
            task_id=task.task_id,
            detail={"assignee": reviewer, "previous": task.assignee},
        )

    async def assign_round_robin(self) -> int:
        """Hand pending tasks to idle on-call reviewers, the one assigned longest ago first,
        one task each at a time (the earliest deadline among their tenants' tasks). Driven by
        the few idle reviewers, never by scanning the backlog."""
        done = 0
        now = self.now()
        async with self.store.transaction() as tx:
            idle = await tx.idle_on_call(now)
        for reviewer in idle:
            try:
                async with self.store.transaction() as tx:
                    if not await tx.lock_idle_reviewer(reviewer.id, now):
                        continue  # another replica assigned them meanwhile
                    task = await tx.next_claimable(reviewer.tenants, now)
                    if task is None:
                        continue
                    await self._assign(tx, task, reviewer.id, now, actor=None, how="assign")
            except ClaimLimitReached:
                continue  # an expired lock not released yet still counts: the next round
            done += 1
        if done:
            await self._sent()
        return done

    async def release_expired_locks(self, limit: int = 500) -> int:
        now = self.now()
        async with self.store.transaction() as tx:
            tasks = await tx.expired_locks(now, limit)
            for task in tasks:
                await tx.unassign(task.task_id)
                await self._publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
                await tx.audit(
                    actor=None,
                    action="task.lock_expired",
                    tenant=task.tenant,
                    task_id=task.task_id,
                    detail={"previous": task.assignee},
                )
        if tasks:
            await self._sent()
        return len(tasks)

    # --- decisions ---------------------------------------------------------------------------
    async def decide(self, reviewer: Reviewer, task_id: str, form: dict[str, Any]) -> Decided:
        """First-stage decision: stored with its audit row, the Review and the human Decision
        queued for publishing and the verdict cache override, all in one transaction."""
        self._require(reviewer, Permission.DECIDE)
        now = self.now()
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.decide", lock=True)
            if task.state is TaskState.DECIDED:
                raise Conflict("this task has been decided already")
            held_by_other = (
                task.state is TaskState.ASSIGNED
                and task.assignee not in (None, reviewer.id)
                and task.lock_expires_at is not None
                and task.lock_expires_at > now
            )
            if held_by_other:
                raise Conflict("another reviewer holds this task")
            post = await tx.post_text(task.post_id, task.tenant)
            sub = self._validated(task.model_verdict, task, form, post)
            late = task.sla is SlaState.EXPIRED or now > task.deadline
            pack = self.policies.by_ref(task.policy) or self.policies.for_post(
                task.tenant, task.region
            )
            review = review_event(
                task, sub, stage=ReviewStage.FIRST, reviewer=reviewer.id, late=late, at=now
            )
            decision = human_decision(task, sub, pack, late=late, at=now)
            await tx.insert_review(
                review, action=decision.action, human_decision_id=decision.decision_id
            )
            await tx.mark_decided(task.task_id, sub.verdict, late, now)
            await self._publish(tx, review)
            await self._publish(tx, decision)
            await self._archive(tx, task, review, pack, post, sub.refusal)
            entry = human_verdict_entry(task, sub, late=late, at=now)
            await tx.enqueue(
                "human_verdict",
                "verdict_cache",
                human_verdict_key(task.tenant, task.content_key),  # the tenant's own, never shared
                entry.model_dump_json().encode(),
            )
            await tx.audit(
                actor=reviewer.id,
                action="task.decide",
                tenant=task.tenant,
                task_id=task.task_id,
                detail={
                    "from": task.model_verdict.value,
                    "to": sub.verdict.value,
                    "outcome": sub.outcome.value,
                    "tags": list(sub.tags),
                    "reason": sub.reason,
                    "late": late,
                    "refusal": sub.refusal,
                    "action": decision.action.value,
                    "decision_id": decision.decision_id,
                },
            )
        review_metrics.decisions.add(
            1,
            {
                "tenant": task.tenant,
                "verdict": sub.verdict.value,
                "outcome": sub.outcome.value,
                "stage": ReviewStage.FIRST.value,
                "late": late,
            },
        )
        review_metrics.response_time.record(
            max(0.0, (now - task.created_at).total_seconds()), {"tenant": task.tenant}
        )
        # The depth just changed: the next page refreshes the figures (and shows the old
        # ones meanwhile).
        self._stats = {k: (0.0, v) for k, (_, v) in self._stats.items()}
        await self._sent()
        log.info(
            "task decided",
            extra={
                "task_id": task.task_id,
                "post_id": task.post_id,
                "tenant": task.tenant,
                "verdict": sub.verdict.value,
                "late": late,
            },
        )
        return Decided(
            await self._reload(task_id),
            review.review_id,
            decision.decision_id,
            decision.action.value,
            late,
        )

    async def qa(
        self, reviewer: Reviewer, task_id: str, form: dict[str, Any], *, blind: bool = False
    ) -> Decided:
        """A senior's re-review of a decided task (stage `qa`): stored, audited and published
        as a Review; it does not re-action the post. `blind` (the QA queue): the senior gives
        a label and a reason without having seen the first review's; whether that confirms or
        corrects it is worked out here. Deciding the last open item of a QA batch closes the
        batch: its agreement is evaluated and any alert queued, in this transaction."""
        self._require(reviewer, Permission.QA)
        self._require(reviewer, Permission.DECIDE)
        now = self.now()
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.qa", lock=True)
            if task.state is not TaskState.DECIDED:
                raise Conflict("only decided tasks can be re-reviewed")
            if await tx.first_reviewer(task.task_id) == reviewer.id:
                raise Conflict("a QA re-review must come from someone else than the first reviewer")
            batch = await tx.lock_open_qa_batch_of(task.task_id)
            if batch is not None and not blind:
                # Sampled items are labelled blind: a "confirm" without having looked would
                # count as agreement.
                raise Conflict("this task is in the QA queue: label it there (blind)")
            first = await tx.first_review_verdict(task.task_id)
            base = first or task.human_verdict or task.model_verdict
            post = await tx.post_text(task.post_id, task.tenant)
            if blind:
                form = blind_form(form, base)
            sub = self._validated(base, task, form, post)
            review = review_event(
                task, sub, stage=ReviewStage.QA, reviewer=reviewer.id, late=False, at=now
            )
            if not await tx.insert_review(review):
                raise Conflict("you have re-reviewed this task already")
            await self._publish(tx, review)
            pack = self.policies.by_ref(task.policy) or self.policies.for_post(
                task.tenant, task.region
            )
            await self._archive(tx, task, review, pack, post, sub.refusal)
            await tx.audit(
                actor=reviewer.id,
                action="task.qa",
                tenant=task.tenant,
                task_id=task.task_id,
                detail={
                    "first": first.value if first else None,
                    "qa": sub.verdict.value,
                    "tags": list(sub.tags),
                    "reason": sub.reason,
                    "refusal": sub.refusal,
                    "blind": blind,
                    "batch": batch,
                },
            )
            if batch is not None and not await tx.qa_undecided(batch):
                await self._close_qa(tx, batch, now, why="all items decided")
        review_metrics.decisions.add(
            1,
            {
                "tenant": task.tenant,
                "verdict": sub.verdict.value,
                "outcome": sub.outcome.value,
                "stage": ReviewStage.QA.value,
                "late": False,
            },
        )
        await self._sent()
        return Decided(task, review.review_id, None, None, False)

    # --- QA audits ---------------------------------------------------------------------------
    async def qa_queue(self, reviewer: Reviewer, limit: int = 100) -> list[QaEntry]:
        """The open QA items this senior may re-review (their tenants, never their own first
        reviews), without the first review's label or author. The read is audited."""
        self._require(reviewer, Permission.QA)
        self._require(reviewer, Permission.DECIDE)
        async with self.store.transaction() as tx:
            entries = await tx.qa_queue(reviewer.id, reviewer.tenants, limit)
            await tx.audit(actor=reviewer.id, action="qa.queue", detail={"items": len(entries)})
        return [blinded(e) for e in entries]

    async def qa_view(self, reviewer: Reviewer, task_id: str) -> tuple[QaEntry, PostText | None]:
        """One open QA item with the post's text, blind (see `qa_queue`); audited."""
        self._require(reviewer, Permission.QA)
        self._require(reviewer, Permission.DECIDE)
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "qa.read")
            entry = await tx.open_qa_item(task.task_id)
            if entry is None or entry.first_reviewer == reviewer.id:
                await tx.audit(
                    actor=reviewer.id,
                    action="qa.read",
                    outcome="rejected",
                    tenant=task.tenant,
                    task_id=task.task_id,
                    detail={"why": "not an open QA item of yours"},
                )
                raise NotFound("no open QA item for this task")
            text = await tx.post_text(task.post_id, task.tenant)
            await tx.audit(
                actor=reviewer.id,
                action="qa.read",
                tenant=task.tenant,
                task_id=task.task_id,
                detail={"period": entry.period, "text": text is not None},
            )
        return blinded(entry), text

    async def qa_report(self, reviewer: Reviewer, period: str | None) -> QaReport | None:
        """A batch's progress and per-reviewer agreement, over the caller's tenants (the
        latest batch when `period` is None). Audited."""
        self._require(reviewer, Permission.QA)
        async with self.store.transaction() as tx:
            batch = await (tx.qa_batch(period) if period else tx.latest_qa_batch())
            if batch is None:
                await tx.audit(
                    actor=reviewer.id, action="qa.report", detail={"period": period, "found": False}
                )
                return None
            scores = await tx.qa_scores(batch.period, reviewer.tenants)
            items, undecided = await tx.qa_progress(batch.period, reviewer.tenants)
            await tx.audit(actor=reviewer.id, action="qa.report", detail={"period": batch.period})
        return QaReport(batch, scores, items, undecided, below_bar(scores, batch.min_agreement))

    async def sample_qa(self, period: QaPeriod, size: int | None = None) -> QaSampled:
        """Sample the period's first reviews into a QA batch, once per period (a second call,
        here or on another replica, finds the batch and does nothing), and close the batches of
        earlier periods with whatever their seniors decided. Seeded by the period's name."""
        size = self.qa_sample_size if size is None else size
        now = self.now()
        async with self.store.transaction() as tx:
            created = await tx.insert_qa_batch(
                period.key, period.start, period.end, size, self.qa_min_agreement, now
            )
            picked: list[QaCandidate] = []
            if created:
                candidates = await tx.qa_candidates(period.start, period.end)
                picked = spread(
                    candidates, size, period.key, ident=lambda c: c.task_id, by=lambda c: c.reviewer
                )
                await tx.insert_qa_items(period.key, picked)
                await tx.audit(
                    actor=None,
                    action="qa.sample",
                    detail={
                        "period": period.key,
                        "size": size,
                        "sampled": len(picked),
                        "of": len(candidates),
                        "reviewers": len({c.reviewer for c in picked}),
                    },
                )
                if not picked:  # nothing to check: the batch is complete as it stands
                    await self._close_qa(tx, period.key, now, why="nothing to sample")
        closed: list[str] = []
        async with self.store.transaction() as tx:
            for earlier in await tx.open_qa_batches(ended_by=period.start):
                await self._close_qa(tx, earlier, now, why="next period sampled")
                closed.append(earlier)
        if created or closed:
            log.info(
                "qa batch sampled",
                extra={
                    "period": period.key,
                    "new": created,
                    "sampled": len(picked),
                    "closed": closed,
                },
            )
            await self._sent()
        return QaSampled(period.key, created, len(picked), tuple(closed))

    async def qa_tick(self) -> QaSampled | None:
        """The review process's timer: sample the last finished period when it is due."""
        if self.qa_sample_size <= 0:
            return None
        return await self.sample_qa(previous_period(self.now(), self.qa_cadence))

    async def _close_qa(self, tx: Tx, period: str, now: datetime, *, why: str) -> None:
        """Evaluate a batch (its row locked by the caller): per-reviewer agreement, and one
        `qa_agreement_low` alert naming the reviewers below the bar, queued in this
        transaction (the relay publishes it to moderation.alerts.v1)."""
        batch = await tx.qa_batch(period)
        if batch is None or batch.closed_at is not None:
            return
        scores = await tx.qa_scores(period)
        agreed = sum(a for a, _ in scores.values())
        compared = sum(c for _, c in scores.values())
        alert = low_agreement_alert(scores, batch.min_agreement, period, now)
        if alert is not None:
            await tx.enqueue("event", Topic.ALERTS.value, alert.alert_id, alert.to_json())
        await tx.close_qa_batch(period, agreed, compared, alert.alert_id if alert else None, now)
        await tx.audit(
            actor=None,
            action="qa.close",
            detail={
                "period": period,
                "why": why,
                "agreed": agreed,
                "compared": compared,
                "below_bar": below_bar(scores, batch.min_agreement),
                "alert": alert.alert_id if alert else None,
            },
        )

    def _validated(
        self, base: Verdict, task: Task, form: dict[str, Any], post: PostText | None
    ) -> Submission:
        # The first stage compares with the model's label; QA with the first human label.
        return validate_submission(
            model_verdict=base,
            model_categories=task.categories,
            outcome=form.get("outcome"),
            verdict=form.get("verdict"),
            reason=form.get("reason"),
            tags=form.get("tags") or (),
            categories=form.get("categories"),
            allowed_tags=self.tags,
            refusal=form.get("refusal"),
            is_response=post is not None and post.kind == Kind.RESPONSE.value,
        )

    # --- helpers -----------------------------------------------------------------------------
    def _require(self, reviewer: Reviewer, permission: Permission) -> None:
        if not reviewer.may(permission):
            raise Forbidden(f"role {reviewer.role.value} may not {permission.value}")

    async def _visible(
        self, tx: Tx, reviewer: Reviewer, task_id: str, action: str, *, lock: bool = False
    ) -> Task:
        task = await (tx.task_for_update(task_id) if lock else tx.task(task_id))
        if task is None or not reviewer.sees(task.tenant):
            # Audited outside this transaction: the caller's transaction is rolled back.
            await self.store.audit_alone(
                actor=reviewer.id,
                action=action,
                outcome="denied",
                tenant=task.tenant if task else None,
                task_id=task_id[:128],
                detail={"why": "other tenant" if task else "no such task"},
            )
            review_metrics.denied.add(1, {"reason": "other_tenant" if task else "not_found"})
            raise NotFound("no such task")
        return task

    async def _publish(self, tx: Tx, event: Review | ReviewAssignment | Decision) -> None:
        """Queue an event (keyed by post) for the relay, in this transaction."""
        if isinstance(event, Decision):
            topic = ACTION_TOPIC[event.action]
        elif isinstance(event, Review):
            topic = Topic.REVIEWS
        else:
            topic = Topic.ASSIGNMENTS
        await tx.enqueue("event", topic.value, event.post_id, event.to_json())

    async def _archive(
        self,
        tx: Tx,
        task: Task,
        review: Review,
        pack: PolicyPack,
        post: PostText | None,
        refusal: bool | None,
    ) -> None:
        """Queue the review's feedback sample (the relay appends it to the archive). Without
        the post's text there is nothing to train on: counted and logged."""
        if post is None:
            review_metrics.samples_without_text.add(1, {"tenant": task.tenant})
            log.warning("review archived without text", extra={"task_id": task.task_id})
            return
        sample = feedback_sample(task, review, post, pack, human_refusal=refusal)
        await tx.enqueue("feedback_sample", "archive", review.review_id, sample.to_json())

    async def _reload(self, task_id: str) -> Task:
        async with self.store.transaction() as tx:
            task = await tx.task(task_id)
        assert task is not None
        return task


def feedback_sample(
    task: Task,
    review: Review,
    post: PostText,
    pack: PolicyPack,
    *,
    human_refusal: bool | None = None,
) -> FeedbackSample:
    """The archived form of a review: the post as the model saw it, what it said (for a
    response, its refusal label too), what the human decided
    (see guardstream.contracts.feedback)."""
    return from_review(
        review,
        text=post.text,
        kind=Kind(post.kind),
        prompt=post.prompt,
        lang=post.lang or task.lang,
        pred_categories=tuple(task.categories),
        pred_reason=task.reason,
        pred_refusal=task.model_refusal,
        decided_at=task.created_at,
        pack=pack,
        human_refusal=human_refusal,
    )


def blinded(entry: QaEntry) -> QaEntry:
    """The item as a senior sees it before deciding: no first label, reviewer or lock holder."""
    task = replace(entry.task, human_verdict=None, assignee=None, lock_expires_at=None)
    return replace(entry, task=task, first_reviewer=None)


@dataclass(frozen=True, slots=True)
class QaReport:
    batch: QaBatch
    scores: dict[str, tuple[int, int]]  # first reviewer → (agreed, re-reviewed)
    items: int  # of the caller's tenants
    undecided: int
    below_bar: list[str]


@dataclass(frozen=True, slots=True)
class QaSampled:
    period: str
    created: bool  # False: the period had been sampled already
    sampled: int
    closed: tuple[str, ...]  # earlier batches closed now
