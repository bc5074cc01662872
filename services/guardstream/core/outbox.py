"""What one batch sends, and the moment it is all on the broker.

Triage and the scorer queue their outputs (decisions, score requests, DLQ records) here while
they work through a batch and `flush()` before the batch's offsets may be committed. A failed
delivery is a transient error: the batch is retried whole, and the re-sent records carry the
same ids, so downstream sees a harmless replay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from guardstream.core.contracts import ContractError, Decision, Envelope
from guardstream.core.decisions import ACTION_TOPIC
from guardstream.core.kafka import dead_letter
from guardstream.core.loop import TransientError
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames


class Outbox:
    def __init__(self, producer: AIOKafkaProducer, settings: Settings, process: str) -> None:
        self._producer = producer
        self._topics = TopicNames(settings.namespace)
        self._group = settings.group_id(process)
        self._max_request_bytes = settings.kafka_max_request_bytes
        self._pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: Topic, event: Envelope, key: str) -> None:
        self._pending.append(
            await self._producer.send(self._topics[topic], event.to_json(), key=key.encode())
        )

    async def decision(self, decision: Decision) -> None:
        """To the action topic for its action, keyed by post so a post's decisions stay ordered."""
        await self.send(ACTION_TOPIC[decision.action], decision, decision.post_id)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: ContractError) -> None:
        self._pending.append(
            await dead_letter(
                self._producer,
                self._topics[Topic.DLQ],
                record,
                error,
                consumer=self._group,
                max_request_bytes=self._max_request_bytes,
            )
        )

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            await asyncio.gather(*pending)
        except Exception as exc:
            raise TransientError(f"delivery failed: {type(exc).__name__}") from exc
