"""The scorer consumer: score requests in, model decisions out, verdict cache filled.

Per batch: requests are validated (bad ones to the DLQ), grouped by content key so equal
content is scored once, the cache is re-checked (another scorer may have just scored it), the
remaining keys are scored concurrently (vLLM batches them), verdicts are cached, and one
decision per request goes to its action topic. Offsets are committed after every decision is
acknowledged. Unusable model output is `controversial`, never `safe`. An engine failure is
transient (the batch is retried, nothing skipped); a dead engine ends the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from guardstream.core.cache import CachedVerdict, VerdictCache
from guardstream.core.contracts import ContractError, ScoreRequest, Source, utcnow
from guardstream.core.decisions import ACTION_TOPIC, build_decision, cache_reason, model_reason
from guardstream.core.kafka import dead_letter
from guardstream.core.loop import Record, Records, TransientError
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames
from guardstream.scorer.engine import GuardEngine, ScoringError
from guardstream.scorer.output import label_confidence, parse_answer
from guardstream.scorer.prompt import messages_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scored:
    verdict: CachedVerdict
    truncated: bool


class Scorer:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        cache: VerdictCache,
        engine: GuardEngine,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._cache = cache
        self._engine = engine
        self._topics = TopicNames(settings.namespace)
        self._group = settings.group_id("scorer")
        self.counts: dict[str, int] = {
            "consumed": 0,
            "scored": 0,
            "cache_hit": 0,
            "unparseable": 0,
            "dlq": 0,
        }

    async def score(self, request: ScoreRequest) -> Scored:
        try:
            raw = await self._engine.assess(messages_for(request), request.content_key)
        except ScoringError as exc:
            raise TransientError(f"scoring failed: {exc}") from exc
        answer = parse_answer(raw.text)
        confidence = None
        if answer.label is not None:
            confidence = label_confidence(answer.label, raw.label_logprobs)
        else:
            self.counts["unparseable"] += 1
            log.warning(
                "unusable model output",
                extra={"post_id": request.post_id, "problem": answer.problem},
            )
        entry = CachedVerdict(
            verdict=answer.verdict,
            categories=answer.categories,
            confidence=None if confidence is None else round(confidence, 6),
            refusal=answer.refusal,
            reason=model_reason(answer.label, answer.categories, answer.problem),
            source=Source.MODEL,
            model=self._engine.model_id,
            adapter=self._engine.adapter,
            decided_at=utcnow(),
        )
        return Scored(entry, raw.truncated)

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
        sends = []
        by_key: dict[str, list[ScoreRequest]] = defaultdict(list)
        for record in records:
            try:
                request = ScoreRequest.from_json(record.value)
            except ContractError as exc:
                sends.append(await self._dead_letter(record, exc))
                self.counts["dlq"] += 1
                continue
            by_key[request.content_key].append(request)

        cached = await self._cache.get_many(list(by_key))
        misses = [key for key in by_key if key not in cached]
        scored = await asyncio.gather(*(self.score(by_key[key][0]) for key in misses))
        fresh = {key: result.verdict for key, result in zip(misses, scored, strict=True)}
        await self._cache.put_many(fresh)
        self.counts["scored"] += len(fresh)

        for key, requests in by_key.items():
            entry, source = (
                (fresh[key], Source.MODEL) if key in fresh else (cached[key], Source.CACHE)
            )
            reason = entry.reason if source is Source.MODEL else cache_reason(entry)
            for request in requests:
                decision = build_decision(
                    post_id=request.post_id,
                    post_event_id=request.post_event_id,
                    tenant=request.tenant,
                    policy=request.policy,
                    content_key=key,
                    verdict=entry.verdict,
                    categories=entry.categories,
                    confidence=entry.confidence,
                    refusal=entry.refusal,
                    reason=reason,
                    source=source,
                    model=entry.model,
                    adapter=entry.adapter,
                    decided_at=entry.decided_at if source is Source.MODEL else None,
                )
                sends.append(
                    await self._producer.send(
                        self._topics[ACTION_TOPIC[decision.action]],
                        decision.to_json(),
                        key=request.post_id.encode(),
                    )
                )
            if source is Source.CACHE:
                self.counts["cache_hit"] += len(requests)
        self.counts["consumed"] += len(records)
        try:
            await asyncio.gather(*sends)
        except Exception as exc:
            raise TransientError(f"produce failed: {type(exc).__name__}") from exc
