"""What every consumer process does around its handler: start-up, signals, health, shutdown.

SIGTERM / SIGINT stop fetching; the batch in hand finishes and is committed; clients close;
the process exits 0. Readiness turns true once the consumer holds partitions.
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
from guardstream.core.loop import BatchHandler, run_batches
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
    build: Callable[[AIOKafkaProducer, AsyncExitStack], Awaitable[BatchHandler]],
    stop: asyncio.Event,
) -> int:
    """Run one consumer process until `stop`; returns the number of committed records."""
    log.info("starting", extra={"service": name, "settings": settings.public_view()})
    consumer: AIOKafkaConsumer | None = None
    health = HealthServer(
        settings.health_port,
        ready=lambda: consumer is not None and bool(consumer.assignment()),
        name=name,
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
            source_topic,
            group_id=settings.group_id(name),
            client_id=f"guardstream-{name}",
            max_records=max_records,
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        committed = await run_batches(
            consumer,
            handler,
            stop,
            max_records=max_records,
            poll_timeout_ms=settings.poll_timeout_ms,
            backoff_max_s=settings.retry_backoff_max_s,
            name=name,
        )
        log.info("stopping", extra={"service": name, "committed": committed})
    return committed
