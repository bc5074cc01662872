"""Entry point of the triage process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaProducer

from guardstream.core.cache import RedisVerdictCache
from guardstream.core.journal import RedisDecisionJournal
from guardstream.core.loop import BatchHandler, LoopReport
from guardstream.core.neardup import RedisNearDuplicateIndex
from guardstream.core.process import serve
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames
from guardstream.policy import load_registry
from guardstream.scorer.engine import served_model_id
from guardstream.triage.service import Triage


async def run(
    settings: Settings, stop: asyncio.Event, *, expose: Callable[[Triage], None] | None = None
) -> LoopReport:
    """Run triage until `stop`. `expose` receives the handler (tests read its counters)."""

    async def build(producer: AIOKafkaProducer, stack: AsyncExitStack) -> BatchHandler:
        cache = RedisVerdictCache.from_settings(settings)
        stack.push_async_callback(cache.close)
        journal = RedisDecisionJournal.from_settings(settings)
        stack.push_async_callback(journal.close)
        near = RedisNearDuplicateIndex.from_settings(settings)
        stack.push_async_callback(near.close)
        policies = load_registry(settings.policy_dir)
        triage = Triage(
            settings, producer, cache, journal, policies, near, model=served_model_id(settings)
        )
        if expose is not None:
            expose(triage)
        return triage.handle

    return await serve(
        settings,
        name="triage",
        source_topic=TopicNames(settings.namespace)[Topic.POSTS],
        max_records=settings.triage_batch_max,
        max_in_flight=settings.triage_max_in_flight,
        build=build,
        stop=stop,
    )
