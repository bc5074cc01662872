"""What every consumer process does around its handler: start-up, signals, health, shutdown.

SIGTERM / SIGINT stop fetching; in-flight batches get the drain budget to finish; the done
watermark is committed; clients close; the process exits 0 and logs what it drained and
committed. Readiness turns true once the consumer holds partitions.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from guardstream.core.health import HealthServer
from guardstream.core.kafka import make_consumer, make_producer
from guardstream.core.loop import BatchHandler, BatchLoop, LoopConfig, LoopReport
from guardstream.core.settings import Settings

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve(
    settings: Settings,
    *,
    name: str,
    source_topic: str,
    max_records: int,
    max_in_flight: int,
    build: Callable[[AIOKafkaProducer, AsyncExitStack], Awaitable[BatchHandler]],
    stop: asyncio.Event,
    live: Callable[[], bool] = lambda: True,
) -> LoopReport:
    """Run one consumer process until `stop`. `live` false fails `/healthz` (restart me)."""
    log.info("starting", extra={"service": name, "settings": settings.public_view()})
    consumer: AIOKafkaConsumer | None = None
    loop: BatchLoop | None = None

    def gauges() -> dict[str, int]:
        if loop is None:
            return {}
        return {"in_flight": loop.report.in_flight, "peak_in_flight": loop.report.peak_in_flight}

    health = HealthServer(
        settings.health_port,
        ready=lambda: consumer is not None and bool(consumer.assignment()),
        name=name,
        gauges=gauges,
        live=live,
    )
    async with AsyncExitStack() as stack:
        await health.start()
        stack.push_async_callback(health.close)
        # The handler is built first: loading a model takes minutes, a broker connection not.
        producer = make_producer(settings, client_id=f"guardstream-{name}")
        stack.push_async_callback(producer.stop)
        handler = await build(producer, stack)
        await producer.start()
        consumer = make_consumer(
            settings,
            group_id=settings.group_id(name),
            client_id=f"guardstream-{name}",
            max_records=max_records,
        )
        loop = BatchLoop(
            consumer,
            handler,
            LoopConfig(
                name=name,
                max_records=max_records,
                max_in_flight=max_in_flight,
                poll_timeout_ms=settings.poll_timeout_ms,
                backoff_max_s=settings.retry_backoff_max_s,
                drain_s=settings.shutdown_drain_s,
                fault=settings.fault,
                group=settings.group_id(name),
            ),
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        consumer.subscribe([source_topic], listener=loop.listener())
        report = await loop.run(stop)
        log.info(
            "stopping",
            extra={
                "service": name,
                "processed": report.processed,
                "commits": report.commits,
                "retries": report.retries,
                "drained": report.drained,
                "peak_in_flight": report.peak_in_flight,
            },
        )
    return report
