"""Review-console objects the unit tests start from: the one maker of a test's task."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from guardstream.contracts.events import Verdict
from guardstream.contracts.identity import PostIdentity
from guardstream.review.logic import SlaState, Task, TaskState, task_id

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def review_task(**changes: Any) -> Task:
    """A controversial post's task assigned to alice, created at `NOW` with a two-hour
    deadline, with `changes` made to it."""
    task = Task(
        task_id=task_id("acme", "p1", "default@1"),
        identity=PostIdentity(
            tenant="acme",
            post_id="p1",
            post_event_id="e1",
            policy="default@1",
            content_key="a" * 32,
        ),
        lang="zh",
        region=None,
        decision_id="d" * 32,
        model_verdict=Verdict.CONTROVERSIAL,
        categories=("Politically Sensitive Topics",),
        confidence=0.61,
        reason="Qwen3Guard: Controversial",
        model="tiny",
        adapter=None,
        domain_tags=(),
        created_at=NOW,
        deadline=NOW + timedelta(hours=2),
        warn_at=NOW + timedelta(hours=1),
        assign_by=NOW + timedelta(minutes=15),
        state=TaskState.ASSIGNED,
        sla=SlaState.OK,
        assignee="alice",
        lock_expires_at=None,
        decided_at=None,
        human_verdict=None,
        late=False,
    )
    return dataclasses.replace(task, **changes)
