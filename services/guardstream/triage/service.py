"""The triage consumer: posts in; cache-hit decisions, score requests and DLQ records out.

Per batch: every record is validated and keyed, the verdict cache is asked once (MGET) for
the whole batch, hits become decisions on their action topic, misses become score requests
keyed by content key, bad records go to the DLQ with their origin. Offsets are committed only
after every produced record is acknowledged (see `guardstream.core.loop` for the full table).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer

from guardstream.core.cache import VerdictCache
from guardstream.core.contracts import ContractError, Source
from guardstream.core.decisions import ACTION_TOPIC, build_decision, cache_reason
from guardstream.core.kafka import dead_letter
from guardstream.core.loop import Record, Records, TransientError
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames
from guardstream.triage.logic import Triaged, score_request, triage_record

log = logging.getLogger(__name__)


class Triage:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        cache: VerdictCache,
        *,
        model: str,
        adapter: str | None = None,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._cache = cache
        self._topics = TopicNames(settings.namespace)
        self._group = settings.group_id("triage")
        self._model = model
        self._adapter = adapter
        self.counts: dict[str, int] = {"consumed": 0, "cache_hit": 0, "scoring": 0, "dlq": 0}

    async def _dead_letter(self, record: Record, error: ContractError) -> asyncio.Future[Any]:
        return await dead_letter(
            self._producer,
            self._topics[Topic.DLQ],
            record,
            error,
            consumer=self._group,
            max_request_bytes=self._settings.kafka_max_request_bytes,
        )

    async def handle(self, records: Records) -> None:
        accepted: list[Triaged] = []
        sends = []
        for record in records:
            try:
                accepted.append(
                    triage_record(
                        record.value,
                        max_text_chars=self._settings.max_text_chars,
                        model=self._model,
                        adapter=self._adapter,
                    )
                )
            except ContractError as exc:
                sends.append(await self._dead_letter(record, exc))
                self.counts["dlq"] += 1

        cached = await self._cache.get_many([item.content_key for item in accepted])
        policy = self._settings.policy_version
        for item in accepted:
            post = item.post
            hit = cached.get(item.content_key)
            if hit is not None:
                decision = build_decision(
                    post_id=post.post_id,
                    post_event_id=post.event_id,
                    tenant=post.tenant,
                    policy=policy,
                    content_key=item.content_key,
                    verdict=hit.verdict,
                    categories=hit.categories,
                    confidence=hit.confidence,
                    refusal=hit.refusal,
                    reason=cache_reason(hit),
                    source=Source.CACHE,
                    model=hit.model,
                    adapter=hit.adapter,
                )
                topic = self._topics[ACTION_TOPIC[decision.action]]
                sends.append(
                    await self._producer.send(topic, decision.to_json(), key=post.post_id.encode())
                )
                self.counts["cache_hit"] += 1
            else:
                request = score_request(item, policy)
                sends.append(
                    await self._producer.send(
                        self._topics[Topic.SCORE_REQUESTS],
                        request.to_json(),
                        key=item.content_key.encode(),
                    )
                )
                self.counts["scoring"] += 1
        self.counts["consumed"] += len(records)
        try:
            await asyncio.gather(*sends)
        except Exception as exc:
            # Some outputs may be on the broker already; redelivery re-emits the same ids.
            raise TransientError(f"produce failed: {type(exc).__name__}") from exc
