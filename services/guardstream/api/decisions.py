"""The latest-decision index behind `GET /v1/decisions/{post_id}`: the API process reads the
action topics (consumer group `guardstream-api-decisions`) into `verdict.latest`.

It also enqueues the decision callbacks (`api.delivery`): a human's or the SLA timer's
decision on a watched post of a tenant with a webhook, once per event id.

Commit table: a batch recorded (and its callbacks enqueued) → committed; a record that is no
decision → DLQ with the contract's reason, then committed; Redis refusing the write or
PostgreSQL the enqueueing → transient, the batch is retried (nothing committed past it; both
writes are idempotent); shutdown → what is recorded is committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer

from guardstream.contracts.events import ContractError, Decision
from guardstream.contracts.topics import ACTION_TOPICS, TopicNames
from guardstream.runtime.loop import Records
from guardstream.runtime.settings import Settings
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.latest import LatestDecisions

GROUP = "api-decisions"


def action_topics(settings: Settings) -> list[str]:
    names = TopicNames(settings.namespace)
    return [names[topic] for topic in ACTION_TOPICS]


class DecisionIndexer:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        latest: LatestDecisions,
        callbacks: Callable[[Sequence[Decision]], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._callbacks = callbacks
        self._producer = producer
        self._latest = latest
        self.counts: dict[str, int] = {"indexed": 0, "dlq": 0}

    async def handle(self, records: Records) -> None:
        emitter = Emitter(self._producer, self._settings, GROUP)
        decisions: list[Decision] = []
        for record in records:
            try:
                decisions.append(Decision.from_json(record.value))
            except ContractError as exc:
                await emitter.dead_letter(record, exc)
                self.counts["dlq"] += 1
        await self._latest.record_many(decisions)
        if self._callbacks is not None and decisions:
            await self._callbacks(decisions)
        await emitter.flush()
        self.counts["indexed"] += len(decisions)
