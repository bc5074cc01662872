"""QA audits (the seeds' 质检): seniors re-review decided tasks, blind where the task was sampled
into a period's QA batch; batches are sampled once per period and closed with their
per-reviewer agreement, queueing an alert for reviewers below the bar.

A re-review is stored, audited and published as a Review; it does not re-action the post.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.contracts.events import ReviewStage, utcnow
from guardstream.contracts.topics import Topic
from guardstream.policy import PolicyRegistry
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import (
    Agreement,
    Permission,
    Reviewer,
    SubmissionForm,
    TaskState,
    agreement,
    blind_form,
    review_event,
)
from guardstream.review.qa_period import (
    Cadence,
    QaPeriod,
    below_bar,
    low_agreement_alert,
    previous_period,
    spread,
)
from guardstream.review.services.common import Decided, Deciding, blinded, publish
from guardstream.review.services.errors import Conflict, NotFound
from guardstream.review.store import ReviewStore, Tx
from guardstream.review.store.outbox import EventPayload
from guardstream.review.store.posts import PostText
from guardstream.review.store.qa import QaBatch, QaCandidate, QaEntry

log = logging.getLogger(__name__)


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


class QaService(Deciding):
    def __init__(
        self,
        store: ReviewStore,
        policies: PolicyRegistry,
        *,
        tags: Sequence[str],
        cadence: Cadence = "monthly",
        sample_size: int = 100,
        min_agreement: float = 0.9,
        clock: Callable[[], datetime] = utcnow,
        queued: asyncio.Event | None = None,
    ) -> None:
        super().__init__(store, policies, tags=tags, clock=clock, queued=queued)
        self.cadence: Cadence = cadence
        self.sample_size = sample_size
        self.min_agreement = min_agreement

    async def agreement(self, reviewer: Reviewer) -> Agreement:
        self._require(reviewer, Permission.QA)
        return agreement(await self.store.reviews.agreement_pairs(reviewer.tenants))

    async def re_review(
        self, reviewer: Reviewer, task_id: str, form: SubmissionForm, *, blind: bool = False
    ) -> Decided:
        """A senior's re-review of a decided task (stage `qa`). `blind` (the QA queue): the
        senior gives a label and a reason without having seen the first review's; whether
        that confirms or corrects it is worked out here. Deciding the last open item of a QA
        batch closes the batch: its agreement is evaluated and any alert queued, in this
        transaction."""
        self._require(reviewer, Permission.QA)
        self._require(reviewer, Permission.DECIDE)
        now = self.now()
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.qa", lock=True)
            if task.state is not TaskState.DECIDED:
                raise Conflict("only decided tasks can be re-reviewed")
            if await tx.reviews.first_reviewer(task.task_id) == reviewer.id:
                raise Conflict("a QA re-review must come from someone else than the first reviewer")
            batch = await tx.qa.lock_open_batch_of(task.task_id)
            if batch is not None and not blind:
                # Sampled items are labelled blind: a "confirm" without having looked would
                # count as agreement.
                raise Conflict("this task is in the QA queue: label it there (blind)")
            first = await tx.reviews.first_verdict(task.task_id)
            base = first or task.human_verdict or task.model_verdict
            post = await tx.posts.get(task.post_id, task.tenant)
            if blind:
                form = blind_form(form, base)
            sub = self._validated(base, task, form, post)
            review = review_event(
                task, sub, stage=ReviewStage.QA, reviewer=reviewer.id, late=False, at=now
            )
            if not await tx.reviews.insert(review):
                raise Conflict("you have re-reviewed this task already")
            await publish(tx, review)
            await self._archive(tx, task, review, self._pack(task), post, sub.refusal)
            await tx.audit.write(
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
            if batch is not None and not await tx.qa.undecided(batch):
                await self._close(tx, batch, now, why="all items decided")
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
        self.queued.set()
        return Decided(task, review.review_id, None, None, False)

    async def queue(self, reviewer: Reviewer, limit: int = 100) -> list[QaEntry]:
        """The open QA items this senior may re-review (their tenants, never their own first
        reviews), without the first review's label or author. The read is audited."""
        self._require(reviewer, Permission.QA)
        self._require(reviewer, Permission.DECIDE)
        async with self.store.transaction() as tx:
            entries = await tx.qa.queue(reviewer.id, reviewer.tenants, limit)
            await tx.audit.write(
                actor=reviewer.id, action="qa.queue", detail={"items": len(entries)}
            )
        return [blinded(e) for e in entries]

    async def view(self, reviewer: Reviewer, task_id: str) -> tuple[QaEntry, PostText | None]:
        """One open QA item with the post's text, blind (see `queue`); audited."""
        self._require(reviewer, Permission.QA)
        self._require(reviewer, Permission.DECIDE)
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "qa.read")
            entry = await tx.qa.open_item(task.task_id)
            if entry is None or entry.first_reviewer == reviewer.id:
                await tx.audit.write(
                    actor=reviewer.id,
                    action="qa.read",
                    outcome="rejected",
                    tenant=task.tenant,
                    task_id=task.task_id,
                    detail={"why": "not an open QA item of yours"},
                )
                raise NotFound("no open QA item for this task")
            text = await tx.posts.get(task.post_id, task.tenant)
            await tx.audit.write(
                actor=reviewer.id,
                action="qa.read",
                tenant=task.tenant,
                task_id=task.task_id,
                detail={"period": entry.period, "text": text is not None},
            )
        return blinded(entry), text

    async def report(self, reviewer: Reviewer, period: str | None) -> QaReport | None:
        """A batch's progress and per-reviewer agreement, over the caller's tenants (the
        latest batch when `period` is None). Audited."""
        self._require(reviewer, Permission.QA)
        async with self.store.transaction() as tx:
            batch = await (tx.qa.batch(period) if period else tx.qa.latest_batch())
            if batch is None:
                await tx.audit.write(
                    actor=reviewer.id, action="qa.report", detail={"period": period, "found": False}
                )
                return None
            scores = await tx.qa.scores(batch.period, reviewer.tenants)
            items, undecided = await tx.qa.progress(batch.period, reviewer.tenants)
            await tx.audit.write(
                actor=reviewer.id, action="qa.report", detail={"period": batch.period}
            )
        return QaReport(batch, scores, items, undecided, below_bar(scores, batch.min_agreement))

    async def sample(self, period: QaPeriod, size: int | None = None) -> QaSampled:
        """Sample the period's first reviews into a QA batch, once per period (a second call,
        here or on another replica, finds the batch and does nothing), and close the batches of
        earlier periods with whatever their seniors decided. Seeded by the period's name."""
        size = self.sample_size if size is None else size
        now = self.now()
        async with self.store.transaction() as tx:
            created = await tx.qa.insert_batch(
                period.key, period.start, period.end, size, self.min_agreement, now
            )
            picked: list[QaCandidate] = []
            if created:
                candidates = await tx.qa.candidates(period.start, period.end)
                picked = spread(
                    candidates, size, period.key, ident=lambda c: c.task_id, by=lambda c: c.reviewer
                )
                await tx.qa.insert_items(period.key, picked)
                await tx.audit.write(
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
                    await self._close(tx, period.key, now, why="nothing to sample")
        closed: list[str] = []
        async with self.store.transaction() as tx:
            for earlier in await tx.qa.open_batches(ended_by=period.start):
                await self._close(tx, earlier, now, why="next period sampled")
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
            self.queued.set()
        return QaSampled(period.key, created, len(picked), tuple(closed))

    async def tick(self) -> QaSampled | None:
        """The review process's timer: sample the last finished period when it is due."""
        if self.sample_size <= 0:
            return None
        return await self.sample(previous_period(self.now(), self.cadence))

    async def _close(self, tx: Tx, period: str, now: datetime, *, why: str) -> None:
        """Evaluate a batch (its row locked by the caller): per-reviewer agreement, and one
        `qa_agreement_low` alert naming the reviewers below the bar, queued in this
        transaction (the relay publishes it to moderation.alerts.v1)."""
        batch = await tx.qa.batch(period)
        if batch is None or batch.closed_at is not None:
            return
        scores = await tx.qa.scores(period)
        agreed = sum(a for a, _ in scores.values())
        compared = sum(c for _, c in scores.values())
        alert = low_agreement_alert(scores, batch.min_agreement, period, now)
        if alert is not None:
            await tx.outbox.enqueue(EventPayload.of(Topic.ALERTS, alert.alert_id, alert))
        await tx.qa.close_batch(period, agreed, compared, alert.alert_id if alert else None, now)
        await tx.audit.write(
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
