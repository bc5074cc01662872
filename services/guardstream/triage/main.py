"""Entry point of the triage process."""

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
from guardstream.scorer.engine import served_model_id
from guardstream.triage.service import Triage


async def run(
    settings: Settings, stop: asyncio.Event, *, expose: Callable[[Triage], None] | None = None
) -> LoopReport:
    """Run triage until `stop`. `expose` receives the handler (tests read its counters)."""

    async def build(producer: AIOKafkaProducer, stack: AsyncExitStack) -> BatchHandler:
        stores = Stores.open(settings, stack)
        triage = Triage(settings, producer, stores, model=served_model_id(settings))
        metrics.observe_counts("guardstream.triage.outcomes", triage.counts)
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
