"""The review console's consumer: posts, review decisions and SLA events in; tasks out.

One consumer group reads three topics (all keyed by post_id) through the shared batch runtime
(`runtime.loop`), so offsets follow the done watermark. Commit policy:

| record                                  | what happens                                     |
|-----------------------------------------|--------------------------------------------------|
| posts.v1, valid                         | text kept in `post_texts` (for reviewers only)   |
| actions.review, valid                   | a task, once per (post, policy): a replayed or   |
|                                         | duplicate decision creates no second task        |
| sla-events, warning / expired           | the task is marked (an expired task stays        |
|                                         | decidable); early events wait in `sla_marks`     |
| sla-events, assignment_breach / late    | nothing to store (the console knows)             |
| unparseable / unknown major version /   | DLQ with origin and reason, then done            |
| forbidden character / text over         |                                                  |
| `max_text_chars` (posts, as triage)     |                                                  |
| PostgreSQL refuses a record's data      | the batch is halved until that record is found   |
| (SQLSTATE class 22, 23 or 54)           | (`runtime.loop.isolate`); the rest are stored, it   |
|                                         | goes to the DLQ `store_rejected`, then done      |
| a task/mark the record cannot make      | likewise, DLQ `unprocessable`                    |
| PostgreSQL unreachable / serialisation  | transient: the batch is retried with backoff     |
| any other database error                | the process stops (a bug), nothing committed     |
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import (
    REVIEW_ACTIONS,
    ContractError,
    Decision,
    Post,
    SlaEvent,
    SlaEventKind,
    within_text_limit,
)
from guardstream.contracts.identity import PostIdentity
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.policy import PolicyRegistry, review_sla
from guardstream.review import metrics as review_metrics
from guardstream.review.logic import SlaState, task_id
from guardstream.review.store import ReviewStore
from guardstream.review.store.db import TRANSIENT_DB_ERRORS
from guardstream.review.store.posts import PostText
from guardstream.review.store.tasks import NewTask, SlaMark
from guardstream.runtime import tracing
from guardstream.runtime.loop import Record, Records, isolate, unusable
from guardstream.runtime.settings import Settings
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.erasure import author_key

log = logging.getLogger(__name__)

SOURCES = (Topic.POSTS, Topic.REVIEW, Topic.SLA_EVENTS)
_SLA = {SlaEventKind.WARNING: SlaState.WARNING, SlaEventKind.EXPIRED: SlaState.EXPIRED}
# What PostgreSQL refuses because of a record's values, not because it is unwell: data
# exceptions (22xxx: U+0000, a value too long or out of range), integrity violations (23xxx)
# and program limits (54xxx: an index row too large).
REJECTED_DATA: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


def new_task(
    decision: Decision, policies: PolicyRegistry, traceparent: str | None = None
) -> NewTask:
    """A review task for a decision that sent its post to review, with the pack's SLA;
    `traceparent` is the trace its events will continue."""
    pack = policies.by_ref(decision.policy) or policies.for_post(decision.tenant, None)
    sla = review_sla(pack, decision.categories)
    start = decision.decided_at
    return NewTask(
        task_id=task_id(decision.tenant, decision.post_id, decision.policy),
        identity=PostIdentity.of(decision),
        # The language triage gave the post (its own, else detected); absent from an older
        # triage's decision, the post's own `lang` fills it when its text arrives.
        lang=decision.lang,
        region=None,
        decision_id=decision.decision_id,
        model_verdict=decision.verdict.value,
        categories=decision.categories,
        confidence=decision.confidence,
        reason=decision.reason,
        model=decision.model,
        adapter=decision.adapter,
        domain_tags=tuple(f"{k}:{v}" for k, v in pack.domain_tags.items()),
        created_at=start,
        deadline=start + timedelta(seconds=sla.deadline_s),
        warn_at=start + timedelta(seconds=sla.warn_after_s),
        assign_by=start + timedelta(seconds=sla.assign_within_s),
        traceparent=traceparent,
        refusal=decision.refusal,
        input_truncated=bool(decision.input_truncated),
        action=decision.action.value,
    )


def traceparent_of(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """The trace a task's events continue: this consumer's span for the record when tracing
    runs, else the record's own `traceparent` header (the same trace either way)."""
    for headers in (tracing.output_headers(record=record), record.headers or ()):
        for key, value in headers:
            if key == "traceparent":
                return bytes(value).decode("latin-1")
    return None


def review_decision(raw: bytes | None) -> Decision:
    decision = Decision.from_json(raw)
    if decision.action not in REVIEW_ACTIONS:
        raise ContractError("unexpected_action", f"a {decision.action.value} decision on review")
    return decision


def unexpected_topic() -> None:
    raise ContractError("unexpected_topic", "not a topic this consumer reads")


class ReviewConsumer:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        store: ReviewStore,
        policies: PolicyRegistry,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._store = store
        self._policies = policies
        names = TopicNames(settings.namespace)
        self._topic_of = {names[t]: t for t in SOURCES}
        self.counts = dict.fromkeys(("posts", "tasks", "duplicates", "sla", "dlq"), 0)

    async def handle(self, records: Records) -> None:
        """Store a batch; a record PostgreSQL refuses is found and dead-lettered alone."""
        await isolate(records, self._handle, self._rejected, self._dead_letter)

    @staticmethod
    def _rejected(exc: BaseException) -> ContractError | None:
        return unusable(exc, REJECTED_DATA)

    async def _dead_letter(self, record: Record, error: ContractError) -> None:
        emitter = Emitter(self._producer, self._settings, "review")
        await emitter.dead_letter(record, error)
        await emitter.flush()
        self.counts["dlq"] += 1

    async def _handle(self, records: Records) -> None:
        emitter = Emitter(self._producer, self._settings, "review")
        dead = 0
        texts: list[PostText] = []
        tasks: dict[str, NewTask] = {}
        marks: list[SlaMark] = []
        for record in records:
            topic = self._topic_of.get(record.topic)
            try:
                if topic is Topic.POSTS:
                    post = within_text_limit(
                        Post.from_json(record.value), self._settings.process.max_text_chars
                    )
                    texts.append(
                        PostText(
                            post.post_id,
                            post.tenant,
                            post.kind.value,
                            post.text,
                            post.prompt,
                            post.lang,
                            post.region,
                            author_key(post.tenant, post.author_id),
                        )
                    )
                elif topic is Topic.REVIEW:
                    decision = review_decision(record.value)
                    task = new_task(decision, self._policies, traceparent_of(record))
                    if task.task_id in tasks:
                        self.counts["duplicates"] += 1
                    tasks.setdefault(task.task_id, task)
                elif topic is Topic.SLA_EVENTS:
                    event = SlaEvent.from_json(record.value)
                    if event.kind in _SLA:
                        marks.append(
                            SlaMark(
                                event.decision_id,
                                _SLA[event.kind],
                                event.downgrade_decision_id,
                                event.at,
                            )
                        )
                else:
                    unexpected_topic()
            except ContractError as exc:
                await emitter.dead_letter(record, exc)
                dead += 1
        try:
            await self._store.posts.save(texts)
            created = await self._store.tasks.create(list(tasks.values()))
            await self._store.tasks.mark_sla(marks)
        except TRANSIENT_DB_ERRORS as exc:
            raise TransientError(f"review store: {type(exc).__name__}") from exc
        except asyncpg.exceptions.InsufficientResourcesError as exc:
            raise TransientError(f"review store: {type(exc).__name__}") from exc
        await emitter.flush()
        self.counts["dlq"] += dead
        self.counts["posts"] += len(texts)
        self.counts["tasks"] += created
        self.counts["duplicates"] += len(tasks) - created
        self.counts["sla"] += len(marks)
        if created:
            review_metrics.tasks_created.add(created)
            log.info("review tasks created", extra={"tasks": created})


def source_topics(settings: Settings) -> Sequence[str]:
    names = TopicNames(settings.namespace)
    return [names[t] for t in SOURCES]
