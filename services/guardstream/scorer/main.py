"""Entry point of the scorer process: load the model first, then consume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaProducer

from guardstream.core import metrics
from guardstream.core.loop import BatchHandler, LoopReport
from guardstream.core.process import serve
from guardstream.core.settings import Settings
from guardstream.core.stores import Stores
from guardstream.core.topics import Topic, TopicNames
from guardstream.scorer.engine import GuardEngine, VllmGuardEngine
from guardstream.scorer.metered import MeteredEngine
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
        stores = Stores.open(settings, stack)
        scorer = Scorer(settings, producer, stores, MeteredEngine(guard))
        metrics.observe_counts("guardstream.scorer.outcomes", scorer.counts)
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
