"""Entry point of the triage process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaProducer

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.model.guard import served_model_id
from guardstream.runtime import metrics
from guardstream.runtime.loop import BatchHandler, LoopReport
from guardstream.runtime.process import serve
from guardstream.runtime.settings import Settings
from guardstream.triage.service import Triage
from guardstream.triage.watch import CommitLagWatch, admin_client, scorer_offsets
from guardstream.verdict.stores import Stores


async def run(
    settings: Settings, stop: asyncio.Event, *, expose: Callable[[Triage], None] | None = None
) -> LoopReport:
    """Run triage until `stop`. `expose` receives the handler (tests read its counters)."""
    opened: list[Stores] = []

    async def build(producer: AIOKafkaProducer, stack: AsyncExitStack) -> BatchHandler:
        stores = Stores.open(settings, stack, process="triage")
        stores.watch(stack)
        opened.append(stores)
        watch = await _watch_scorer(settings, stack)
        triage = Triage(settings, producer, stores, model=served_model_id(settings), watch=watch)
        metrics.observe_counts("guardstream.triage.outcomes", triage.counts)
        metrics.observe_languages(triage.languages)
        if expose is not None:
            expose(triage)
        return triage.handle

    return await serve(
        settings,
        name="triage",
        source_topic=TopicNames(settings.namespace)[Topic.POSTS],
        max_records=settings.triage.batch_max,
        max_in_flight=settings.triage.max_in_flight,
        build=build,
        stop=stop,
        gauges=lambda: opened[0].gauges() if opened else {},
    )


async def _watch_scorer(settings: Settings, stack: AsyncExitStack) -> CommitLagWatch:
    """Poll the scorer group's offsets in the background until the process stops."""
    admin = admin_client(settings)
    await admin.start()
    stack.push_async_callback(admin.close)
    watch = CommitLagWatch(
        scorer_offsets(settings, admin), after_s=settings.triage.scorer_unavailable_after_s
    )
    done = asyncio.Event()
    interval_s = min(5.0, settings.triage.scorer_unavailable_after_s / 4)
    polling = asyncio.create_task(watch.run(interval_s, done))

    async def stop_polling() -> None:
        done.set()
        await polling

    stack.push_async_callback(stop_polling)
    return watch
