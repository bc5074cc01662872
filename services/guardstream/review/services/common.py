"""What the review services share: the store, the clock, the signal to the outbox relay, and
the steps several of them take (permission checks, tenant-scoped task reads, queueing events
and feedback samples, validating a submission).

Every method that touches a task runs one transaction holding the change, its audit row and
the events it publishes (outbox); the relay sends those after commit. A task of a tenant the
reviewer may not see is answered as "not found" (no existence leak) and audited as denied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from guardstream.contracts.events import Decision, Kind, Review, ReviewAssignment, Verdict, utcnow
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.topics import Topic
from guardstream.policy import PolicyPack, PolicyRegistry
from guardstream.policy.pack import ReasonRequired
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import (
    Permission,
    Reviewer,
    Submission,
    SubmissionForm,
    Task,
    validate_submission,
)
from guardstream.review.sample import from_review
from guardstream.review.services.errors import Forbidden, NotFound
from guardstream.review.store import ReviewStore, Tx
from guardstream.review.store.outbox import EventPayload, FeedbackSamplePayload
from guardstream.review.store.posts import PostText
from guardstream.review.store.qa import QaEntry
from guardstream.verdict.decisions import ACTION_TOPIC

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decided:
    task: Task
    review_id: str
    decision_id: str | None  # the human decision (first stage only)
    action: str | None
    late: bool


class Service:
    """Base of the review services: the store, the clock, and `queued`, set after a commit
    that queued outbox items (the relay waits on it and sends them at once, without the
    request waiting for the broker)."""

    def __init__(
        self,
        store: ReviewStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        queued: asyncio.Event | None = None,
    ) -> None:
        self.store = store
        self.now = clock
        self.queued = queued if queued is not None else asyncio.Event()

    def _require(self, reviewer: Reviewer, permission: Permission) -> None:
        if not reviewer.may(permission):
            raise Forbidden(f"role {reviewer.role.value} may not {permission.value}")

    async def _visible(
        self, tx: Tx, reviewer: Reviewer, task_id: str, action: str, *, lock: bool = False
    ) -> Task:
        task = await tx.tasks.get(task_id, lock=lock)
        if task is None or not reviewer.sees(task.tenant):
            # Audited outside this transaction: the caller's transaction is rolled back.
            await self.store.audit.write(
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


async def publish(tx: Tx, event: Review | ReviewAssignment | Decision) -> None:
    """Queue an event (keyed by post) for the relay, in this transaction."""
    if isinstance(event, Decision):
        topic = ACTION_TOPIC[event.action]
    elif isinstance(event, Review):
        topic = Topic.REVIEWS
    else:
        topic = Topic.ASSIGNMENTS
    await tx.outbox.enqueue(EventPayload.of(topic, event.post_id, event))


class Deciding(Service):
    """Base of the services that store reviews (first stage and QA): the quick tags a
    submission picks from, the policy packs its decision follows."""

    def __init__(
        self,
        store: ReviewStore,
        policies: PolicyRegistry,
        *,
        tags: Sequence[str],
        clock: Callable[[], datetime] = utcnow,
        queued: asyncio.Event | None = None,
    ) -> None:
        super().__init__(store, clock=clock, queued=queued)
        self.policies = policies
        self.tags = tuple(tags)

    def _pack(self, task: Task) -> PolicyPack:
        return self.policies.by_ref(task.policy) or self.policies.for_post(task.tenant, task.region)

    def pack_for(self, task: Task) -> PolicyPack:
        """The pack the task's decision follows (its categories' descriptions, its id)."""
        return self._pack(task)

    def categories_for(self, task: Task) -> tuple[str, ...]:
        """The categories a reviewer picks from: the task's pack's."""
        return self._pack(task).category_names

    def reason_required(self, task: Task) -> ReasonRequired:
        """The rule of the pack the task's decision follows (the console shows it)."""
        return self._pack(task).reason_required

    def _validated(
        self, base: Verdict, task: Task, form: SubmissionForm, post: PostText | None
    ) -> Submission:
        # The first stage compares with the model's label; QA with the first human label.
        return validate_submission(
            form,
            model_verdict=base,
            model_categories=task.categories,
            allowed_tags=self.tags,
            is_response=post is not None and post.kind == Kind.RESPONSE.value,
            allowed_categories=self.categories_for(task),
            reason_required=self.reason_required(task),
        )

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
        await tx.outbox.enqueue(FeedbackSamplePayload(sample))


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
        # What leaves the review database carries placeholders for personal data (pack.redact).
        text=pack.redact.for_archive(post.text),
        kind=Kind(post.kind),
        prompt=None if post.prompt is None else pack.redact.for_archive(post.prompt),
        lang=post.lang or task.lang,
        pred_categories=tuple(task.categories),
        pred_reason=task.reason,
        pred_refusal=task.model_refusal,
        decided_at=task.created_at,
        pack=pack,
        region=task.region,
        human_refusal=human_refusal,
    )


def blinded(entry: QaEntry) -> QaEntry:
    """The item as a senior sees it before deciding: no first label, reviewer or lock holder."""
    task = replace(entry.task, human_verdict=None, assignee=None, lock_expires_at=None)
    return replace(entry, task=task, first_reviewer=None)
