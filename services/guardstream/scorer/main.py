"""Entry point of the scorer process: load the model first, then consume (and, with
`GUARDSTREAM_SCORER_INTERACTIVE_PORT`, answer the API's interactive requests: `scorer.door`).

Engine death (`EngineDead`) fails `/healthz` as soon as the engine reports it, and the first
batch that meets it stops the loop: finished work is committed, nothing past it, and the
process exits non-zero (the CLI says why) for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaProducer

from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime import metrics
from guardstream.runtime.loop import BatchHandler, LoopReport
from guardstream.runtime.process import serve
from guardstream.runtime.settings import Settings
from guardstream.scorer.door import InteractiveDoor
from guardstream.scorer.engine import GuardEngine
from guardstream.scorer.launch import start_engine
from guardstream.scorer.metered import MeteredEngine
from guardstream.scorer.service import Scorer
from guardstream.verdict.stores import Stores


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    engine: GuardEngine | None = None,
    expose: Callable[[Scorer], None] | None = None,
) -> LoopReport:
    """Run the scorer until `stop`. Without `engine` the configured model is loaded (and
    closed at the end); a given engine is shared and left open. `expose` receives the handler."""

    loaded: list[GuardEngine] = []
    opened: list[Stores] = []

    async def build(producer: AIOKafkaProducer, stack: AsyncExitStack) -> BatchHandler:
        guard = engine
        if guard is None:
            guard = await start_engine(settings)
            stack.push_async_callback(guard.close)
        loaded.append(guard)
        stores = Stores.open(settings, stack, process="scorer")
        stores.watch(stack)
        opened.append(stores)
        scorer = Scorer(settings, producer, stores, MeteredEngine(guard))
        # Runs before the stores, the engine and the producer close (the stack is LIFO).
        stack.push_async_callback(scorer.drain_shadow)
        metrics.observe_counts("guardstream.scorer.outcomes", scorer.counts)
        if settings.scorer.interactive_port:
            door = InteractiveDoor(scorer, settings).server()
            await door.start()
            stack.push_async_callback(door.close)  # closed first: no new interactive work
        if expose is not None:
            expose(scorer)
        return scorer.handle

    if (
        settings.scorer.source == "escalations"
        and settings.scorer.cascade_escalate_below is not None
    ):
        raise ValueError("the escalations tier is the last one: it cannot escalate further")
    escalations = settings.scorer.source == "escalations"
    return await serve(
        settings,
        name="scorer-escalations" if escalations else "scorer",
        source_topic=TopicNames(settings.namespace)[
            Topic.ESCALATIONS if escalations else Topic.SCORE_REQUESTS
        ],
        max_records=settings.scorer.batch_max,
        max_in_flight=settings.scorer.max_in_flight,
        build=build,
        stop=stop,
        # A dead engine fails the liveness probe at once, even with no traffic to notice it.
        live=lambda: all(guard.alive for guard in loaded),
        gauges=lambda: opened[0].gauges() if opened else {},
    )
