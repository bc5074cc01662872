"""Entry point of the scorer process: load the model first, then consume."""

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
from guardstream.scorer.engine import GuardEngine, VllmGuardEngine
from guardstream.scorer.service import Scorer


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    engine: GuardEngine | None = None,
    expose: Callable[[Scorer], None] | None = None,
) -> LoopReport:
    """Run the scorer until `stop`. Without `engine` the configured model is loaded (and
    closed at the end); a given engine is shared and left open. `expose` receives the handler."""

    async def build(producer: AIOKafkaProducer, stack: AsyncExitStack) -> BatchHandler:
        guard = engine
        if guard is None:
            guard = await VllmGuardEngine.start(settings)
            stack.push_async_callback(guard.close)
        cache = RedisVerdictCache.from_settings(settings)
        stack.push_async_callback(cache.close)
        journal = RedisDecisionJournal.from_settings(settings)
        stack.push_async_callback(journal.close)
        near = RedisNearDuplicateIndex.from_settings(settings)
        stack.push_async_callback(near.close)
        policies = load_registry(settings.policy_dir)
        scorer = Scorer(settings, producer, cache, journal, guard, policies, near)
        if expose is not None:
            expose(scorer)
        return scorer.handle

    return await serve(
        settings,
        name="scorer",
        source_topic=TopicNames(settings.namespace)[Topic.SCORE_REQUESTS],
        max_records=settings.scorer_batch_max,
        max_in_flight=settings.scorer_max_in_flight,
        build=build,
        stop=stop,
    )
