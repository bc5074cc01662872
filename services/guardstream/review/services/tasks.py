"""Work on tasks: claims (a reviewer's own, round-robin to on-call reviewers, expiry of locks)
and first-stage decisions.

A decision is stored with its audit row, the Review and the human Decision queued for
publishing, the feedback sample and the verdict cache override, all in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from guardstream.contracts.events import AssignmentEvent, ReviewStage, utcnow
from guardstream.policy import PolicyRegistry
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import (
    Permission,
    Reviewer,
    SlaState,
    SubmissionForm,
    Task,
    TaskState,
    assignment,
    human_decision,
    human_verdict_entry,
    review_event,
)
from guardstream.review.services.common import Decided, Deciding, publish
from guardstream.review.services.errors import Conflict, Unauthenticated
from guardstream.review.services.queue import StatsCache
from guardstream.review.store import ReviewStore, Tx
from guardstream.review.store.claims import ClaimLimitReached
from guardstream.review.store.outbox import HumanVerdictPayload

log = logging.getLogger(__name__)


class TaskService(Deciding):
    def __init__(
        self,
        store: ReviewStore,
        policies: PolicyRegistry,
        *,
        tags: Sequence[str],
        lock_s: int,
        stats: StatsCache,
        max_claims: int = 1,
        clock: Callable[[], datetime] = utcnow,
        queued: asyncio.Event | None = None,
    ) -> None:
        super().__init__(store, policies, tags=tags, clock=clock, queued=queued)
        self._lock = timedelta(seconds=lock_s)
        self.max_claims = max_claims  # the database enforces its own copy (claim_limit)
        self._stats = stats

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
                if not await tx.reviewers.lock(reviewer.id):
                    raise Unauthenticated("this reviewer is disabled")
                for gone in await tx.claims.expired_locks(now, 100, assignee=reviewer.id):
                    await tx.claims.unassign(gone.task_id)
                    await publish(tx, assignment(gone, AssignmentEvent.RELEASED, None, now))
                held = await tx.claims.held_by(reviewer.id, now)
                task = None
                if held is None or await tx.claims.held_count(reviewer.id) < self.max_claims:
                    task = await tx.claims.next_claimable(reviewer.tenants, now)
                if task is None:
                    await tx.audit.write(
                        actor=reviewer.id,
                        action="task.claim",
                        tenant=held.tenant if held else None,
                        task_id=held.task_id if held else None,
                        detail={"held": True} if held else {"empty": True},
                    )
                    return held
                await self._assign(tx, task, reviewer.id, now, actor=reviewer.id, how="claim")
        except ClaimLimitReached as exc:
            await self.store.audit.write(
                actor=reviewer.id, action="task.claim", outcome="rejected", detail={"why": str(exc)}
            )
            raise Conflict("you hold as many tasks as you may: decide or release one") from None
        self.queued.set()
        return await self._reload(task.task_id)

    async def release(self, reviewer: Reviewer, task_id: str) -> Task:
        self._require(reviewer, Permission.DECIDE)
        now = self.now()
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.release", lock=True)
            if task.state is not TaskState.ASSIGNED or task.assignee != reviewer.id:
                raise Conflict("you do not hold this task")
            await tx.claims.unassign(task.task_id)
            await publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
            await tx.audit.write(
                actor=reviewer.id, action="task.release", tenant=task.tenant, task_id=task.task_id
            )
        self.queued.set()
        return await self._reload(task_id)

    async def _assign(
        self, tx: Tx, task: Task, reviewer: str, now: datetime, *, actor: str | None, how: str
    ) -> None:
        if task.state is TaskState.ASSIGNED and task.assignee and task.assignee != reviewer:
            # Its lock expired: the previous holder loses it first.
            await publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
        await tx.claims.assign(task.task_id, reviewer, now + self._lock, now)
        await publish(tx, assignment(task, AssignmentEvent.ASSIGNED, reviewer, now))
        await tx.audit.write(
            actor=actor,
            action=f"task.{how}",
            tenant=task.tenant,
            task_id=task.task_id,
            detail={"assignee": reviewer, "previous": task.assignee},
        )

    async def assign_round_robin(self) -> int:
        """Hand pending tasks to idle on-call reviewers, the one assigned longest ago first,
        one task each at a time (the earliest deadline among their tenants' tasks). Driven by
        the few idle reviewers, never by scanning the backlog. When the reviewer whose turn it
        is finds their tenants' open tasks only row-locked by another transaction (a task
        being updated, another replica's claim), the round ends there: handing the task to the
        next reviewer would skip a turn, and the next round comes within `assign_interval_s`."""
        done = 0
        now = self.now()
        for reviewer in await self.store.reviewers.idle_on_call(now):
            try:
                async with self.store.transaction() as tx:
                    if not await tx.reviewers.lock_idle(reviewer.id, now):
                        continue  # another replica assigned them meanwhile
                    task = await tx.claims.next_claimable(reviewer.tenants, now)
                    if task is None:
                        if await tx.claims.any_claimable(reviewer.tenants, now):
                            break  # locked for a moment: keep this reviewer's turn
                        continue
                    await self._assign(tx, task, reviewer.id, now, actor=None, how="assign")
            except ClaimLimitReached:
                continue  # an expired lock not released yet still counts: the next round
            done += 1
        if done:
            self.queued.set()
        return done

    async def release_expired_locks(self, limit: int = 500) -> int:
        now = self.now()
        async with self.store.transaction() as tx:
            tasks = await tx.claims.expired_locks(now, limit)
            for task in tasks:
                await tx.claims.unassign(task.task_id)
                await publish(tx, assignment(task, AssignmentEvent.RELEASED, None, now))
                await tx.audit.write(
                    actor=None,
                    action="task.lock_expired",
                    tenant=task.tenant,
                    task_id=task.task_id,
                    detail={"previous": task.assignee},
                )
        if tasks:
            self.queued.set()
        return len(tasks)

    async def _reload(self, task_id: str) -> Task:
        task = await self.store.tasks.get(task_id)
        assert task is not None
        return task

    # --- decisions ---------------------------------------------------------------------------
    async def decide(self, reviewer: Reviewer, task_id: str, form: SubmissionForm) -> Decided:
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
            post = await tx.posts.get(task.post_id, task.tenant)
            sub = self._validated(task.model_verdict, task, form, post)
            late = task.sla is SlaState.EXPIRED or now > task.deadline
            pack = self._pack(task)
            review = review_event(
                task, sub, stage=ReviewStage.FIRST, reviewer=reviewer.id, late=late, at=now
            )
            decision = human_decision(task, sub, pack, late=late, at=now)
            await tx.reviews.insert(
                review, action=decision.action, human_decision_id=decision.decision_id
            )
            await tx.tasks.mark_decided(task.task_id, sub.verdict, late, now)
            await publish(tx, review)
            await publish(tx, decision)
            await self._archive(tx, task, review, pack, post, sub.refusal)
            entry = human_verdict_entry(task, sub, late=late, at=now)
            await tx.outbox.enqueue(HumanVerdictPayload.of(task.tenant, task.content_key, entry))
            await tx.audit.write(
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
        self._stats.stale(reviewer.id)
        self.queued.set()
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
