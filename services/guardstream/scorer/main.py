"""Entry point of the scorer process: load the model first, then consume."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaProducer

from guardstream.core.cache import RedisVerdictCache
from guardstream.core.loop import BatchHandler, LoopReport
from guardstream.core.process import serve
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic, TopicNames
from guardstream.scorer.engine import VllmGuardEngine
from guardstream.scorer.service import Scorer


async def run(settings: Settings, stop: asyncio.Event) -> LoopReport:
    async def build(producer: AIOKafkaProducer, stack: AsyncExitStack) -> BatchHandler:
        engine = await VllmGuardEngine.start(settings)
        stack.push_async_callback(engine.close)
        cache = RedisVerdictCache.from_settings(settings)
        stack.push_async_callback(cache.close)
        return Scorer(settings, producer, cache, engine).handle

    return await serve(
        settings,
        name="scorer",
        source_topic=TopicNames(settings.namespace)[Topic.SCORE_REQUESTS],
        max_records=settings.scorer_batch_max,
        max_in_flight=settings.scorer_max_in_flight,
        build=build,
        stop=stop,
    )
