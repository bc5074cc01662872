"""What a reviewer sees of the queue: open tasks by deadline, the queue's figures, one task with
its text. Every read is tenant-scoped and audited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.contracts.events import utcnow
from guardstream.review.logic import Permission, Reviewer, Task
from guardstream.review.services.common import Service, blinded
from guardstream.review.services.errors import Forbidden
from guardstream.review.store import ReviewStore
from guardstream.review.store.posts import PostText
from guardstream.review.store.tasks import QueueFilter, QueueStats


@dataclass(frozen=True, slots=True)
class TaskView:
    task: Task
    text: PostText | None  # None: not allowed to see it, or the post has not arrived


class StatsCache:
    """Queue depth and average response time, per tenant set, at most `max_age_s` old:
    counting 100k open tasks on every page view would cost more than the page itself. When a
    copy is older, one request refreshes it while the others keep the previous copy (no
    stampede of counts)."""

    def __init__(
        self, count: Callable[[Sequence[str]], Awaitable[QueueStats]], max_age_s: float = 1.0
    ) -> None:
        self._count = count
        self.max_age_s = max_age_s
        self._copies: dict[tuple[str, ...], tuple[float, QueueStats]] = {}
        self._refreshing: dict[tuple[str, ...], asyncio.Future[QueueStats]] = {}

    async def get(self, tenants: Sequence[str]) -> QueueStats:
        key = tuple(sorted(tenants))
        cached = self._copies.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.max_age_s:
            return cached[1]
        refreshing = self._refreshing.get(key)
        if refreshing is None:
            refreshing = asyncio.ensure_future(self._refresh(key, tenants))
            self._refreshing[key] = refreshing
        if cached is not None:
            return cached[1]
        return await asyncio.shield(refreshing)

    def stale(self) -> None:
        """The depth just changed: the next read refreshes the figures (and shows the old ones
        meanwhile)."""
        self._copies = {k: (0.0, v) for k, (_, v) in self._copies.items()}

    async def _refresh(self, key: tuple[str, ...], tenants: Sequence[str]) -> QueueStats:
        try:
            fresh = await self._count(tenants)
            self._copies[key] = (time.monotonic(), fresh)
            return fresh
        finally:
            self._refreshing.pop(key, None)


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

    async def stats(self, reviewer: Reviewer) -> QueueStats:
        """Queue depth, expired count and average response time of the reviewer's tenants
        (at most `StatsCache.max_age_s` old)."""
        self._require(reviewer, Permission.READ_QUEUE)
        return await self.figures.get(reviewer.tenants)

    async def view(self, reviewer: Reviewer, task_id: str) -> TaskView:
        self._require(reviewer, Permission.READ_QUEUE)
        async with self.store.transaction() as tx:
            task = await self._visible(tx, reviewer, task_id, "task.read")
            if task.human_verdict is not None and reviewer.may(Permission.QA):
                # A task waiting in the QA queue stays blind for seniors everywhere, not only
                # on the QA page: its first label shows once a senior has re-reviewed it.
                entry = await tx.qa.open_item(task.task_id)
                if entry is not None and entry.first_reviewer != reviewer.id:
                    task = blinded(entry).task
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
        return TaskView(task, text)
