"""What a reviewer sees of the queue: open tasks by deadline, the queue's figures, one task with
its text. Every read is tenant-scoped and audited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.contracts.events import utcnow
from guardstream.review.logic import PREVIEW_CHARS, Permission, Reviewer, Task, text_preview
from guardstream.review.services.common import Service, blinded
from guardstream.review.services.errors import Forbidden
from guardstream.review.store import ReviewStore
from guardstream.review.store.posts import PostText
from guardstream.review.store.tasks import QueueFilter, QueueStats


@dataclass(frozen=True, slots=True)
class TaskView:
    task: Task
    text: PostText | None  # None: not allowed to see it, or the post has not arrived
    blind: bool = False  # an open QA item shown to a senior without its first label


class StatsCache:
    """Queue depth and average response time, per tenant set, never older than `max_age_s`:
    counting 100k open tasks on every page view would cost more than the page itself, so
    readers within that age share one copy, and readers that find none wait for one shared
    count (no stampede of counts).

    A copy past its age is never shown while a fresh one is counted (after an idle hour it
    said 3 for 853 open tasks). A reviewer whose decision changed the figures (`stale(who)`)
    is owed a count begun after it: the page they see right after the decision counts it
    (not "4" beside 3 rows), while everyone else keeps sharing copies at most `max_age_s` old
    (a decision does not cost every reader a count). Per process: behind several replicas, the
    next page may come from one whose copy is up to `max_age_s` old.
    """

    def __init__(
        self,
        count: Callable[[Sequence[str]], Awaitable[QueueStats]],
        max_age_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self.max_age_s = max_age_s
        self._clock = clock
        self._generation = 0  # bumped by every write that changes the figures
        self._owed: dict[str, int] = {}  # reader -> the generation their last write made
        # key -> (when its count began, the generation it began in, the figures)
        self._copies: dict[tuple[str, ...], tuple[float, int, QueueStats]] = {}
        self._refreshing: dict[tuple[str, ...], tuple[int, asyncio.Future[QueueStats]]] = {}

    async def get(self, tenants: Sequence[str], reader: str | None = None) -> QueueStats:
        key = tuple(sorted(tenants))
        need = self._owed.get(reader, 0) if reader is not None else 0
        cached = self._copies.get(key)
        if cached is not None and cached[1] >= need and self._clock() - cached[0] < self.max_age_s:
            figures = cached[2]
        else:
            pending = self._refreshing.get(key)
            if pending is None or pending[0] < need:
                # None running, or one begun before this reader's write: it would not count it.
                future = asyncio.ensure_future(self._refresh(key, tenants, self._generation))
                pending = (self._generation, future)
                self._refreshing[key] = pending
            figures = await asyncio.shield(pending[1])
        if reader is not None and self._owed.get(reader) == need:
            del self._owed[reader]
        return figures

    def stale(self, writer: str | None = None) -> None:
        """The figures just changed (committed): `writer`'s next read counts again."""
        self._generation += 1
        if writer is not None:
            self._owed[writer] = self._generation

    async def _refresh(
        self, key: tuple[str, ...], tenants: Sequence[str], generation: int
    ) -> QueueStats:
        began = self._clock()  # the copy is as old as the moment its count began
        try:
            fresh = await self._count(tenants)
            kept = self._copies.get(key)
            if kept is None or kept[1] <= generation:  # never over a copy counted later
                self._copies[key] = (began, generation, fresh)
            return fresh
        finally:
            if self._refreshing.get(key, (None,))[0] == generation:
                del self._refreshing[key]


class QueueService(Service):
    def __init__(self, store: ReviewStore, *, clock: Callable[[], datetime] = utcnow) -> None:
        super().__init__(store, clock=clock)
        # Shared with `TaskService`, whose decisions make the figures stale.
        self.figures = StatsCache(lambda tenants: store.tasks.stats(tenants, self.now()))

    async def queue(
        self, reviewer: Reviewer, filters: QueueFilter, limit: int
    ) -> tuple[list[Task], QueueStats]:
        self._require(reviewer, Permission.READ_QUEUE)
        if filters.tenant is not None and not reviewer.sees(filters.tenant):
            await self.store.audit.write(
                actor=reviewer.id, action="queue", outcome="denied", tenant=filters.tenant
            )
            raise Forbidden("not a tenant of yours")
        tasks = await self.store.tasks.queue(reviewer.id, reviewer.tenants, filters, limit)
        return tasks, await self.stats(reviewer)

    async def previews(self, reviewer: Reviewer, tasks: Sequence[Task]) -> dict[str, str]:
        """Each task's post text preview (`text_preview`), by task id, for a reviewer who may
        read texts (nobody else gets any); audited as one read of those texts."""
        if not tasks or not reviewer.may(Permission.READ_TEXT):
            return {}
        # Room for the whitespace and controls a preview drops.
        chars = PREVIEW_CHARS * 4
        async with self.store.transaction() as tx:
            heads = await tx.posts.heads([(t.tenant, t.post_id) for t in tasks], chars)
            await tx.audit.write(
                actor=reviewer.id, action="queue.previews", detail={"texts": len(heads)}
            )
        return {
            t.task_id: text_preview(heads[(t.tenant, t.post_id)])
            for t in tasks
            if (t.tenant, t.post_id) in heads
        }

    async def stats(self, reviewer: Reviewer) -> QueueStats:
        """Queue depth, expired count and average response time of the reviewer's tenants
        (at most `StatsCache.max_age_s` old; counted after the reviewer's last decision)."""
        self._require(reviewer, Permission.READ_QUEUE)
        return await self.figures.get(reviewer.tenants, reader=reviewer.id)

    async def view(self, reviewer: Reviewer, task_id: str) -> TaskView:
        self._require(reviewer, Permission.READ_QUEUE)
        async with self.store.transaction() as tx:
            task = view_task = await self._visible(tx, reviewer, task_id, "task.read")
            if task.human_verdict is not None and reviewer.may(Permission.QA):
                # A task waiting in the QA queue stays blind for seniors everywhere, not only
                # on the QA page: its first label shows once a senior has re-reviewed it.
                entry = await tx.qa.open_item(task.task_id)
                if entry is not None and entry.first_reviewer != reviewer.id:
                    task = blinded(entry).task
            blind = task is not view_task
            text = None
            if reviewer.may(Permission.READ_TEXT):
                text = await tx.posts.get(task.post_id, task.tenant)
            await tx.audit.write(
                actor=reviewer.id,
                action="task.read",
                tenant=task.tenant,
                task_id=task.task_id,
                detail={"text": text is not None},
            )
        return TaskView(task, text, blind)
