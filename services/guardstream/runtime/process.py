"""What every consumer process does around its handler: start-up, signals, health, shutdown.

SIGTERM / SIGINT stop fetching; in-flight batches get the drain budget to finish; the done
watermark is committed; clients close; the process exits 0 and logs what it drained and
committed. An input whose output the broker refuses for good goes to the DLQ with an alert
(`emitter.isolating_rejections`); the process goes on. Readiness turns true once the consumer
holds partitions. Before it consumes, the garbage collector is set for a long-lived process
that allocates per record (`settle_garbage_collector`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from guardstream.runtime.health import HealthServer
from guardstream.runtime.kafka import make_consumer, make_producer
from guardstream.runtime.loop import BatchHandler, BatchLoop, LoopConfig, LoopReport
from guardstream.runtime.rejections import isolating_rejections
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)


# Python collects its youngest generation every 700 new objects: the records of in-flight
# batches outlive that, are promoted, and are walked again by every older collection. At
# 10,000 most die young. Each older generation is collected every 20 collections of the one
# below it (default 10).
GC_THRESHOLDS = (10_000, 20, 20)


def settle_garbage_collector() -> None:
    """Freeze what start-up built (modules, clients, policy packs, a model: it lives as long as
    the process) so that no later collection walks it, and collect young objects less often.

    Measured in triage (`bench/pipeline.py`): with Python's defaults a fifth of its CPU went
    to the collector (0.78 of 3.4 CPU-seconds for 20,000 posts); frozen and with these
    thresholds 0.13. Only cyclic garbage waits longer to be freed; reference counting frees
    everything else at once, as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    gauges: Callable[[], dict[str, int]] = dict,
) -> LoopReport:
    """Run one consumer process until `stop`. `live` false fails `/healthz` (restart me);
    `gauges` adds the process's own numbers to what `/healthz` reports."""
    log.info("starting", extra={"service": name, "settings": settings.public_view()})
    consumer: AIOKafkaConsumer | None = None
    loop: BatchLoop | None = None

    def runtime_gauges() -> dict[str, int]:
        if loop is None:
            return gauges()
        report = loop.report
        return {**gauges(), "in_flight": report.in_flight, "peak_in_flight": report.peak_in_flight}

    health = HealthServer(
        settings.process.health_port,
        ready=lambda: consumer is not None and bool(consumer.assignment()),
        name=name,
        gauges=runtime_gauges,
        live=live,
        host=settings.process.listen_host,
    )
    async with AsyncExitStack() as stack:
        await health.start()
        stack.push_async_callback(health.close)
        # The handler is built first: loading a model takes minutes, a broker connection not.
        producer = make_producer(settings, client_id=f"guardstream-{name}")
        stack.push_async_callback(producer.stop)
        handler = isolating_rejections(await build(producer, stack), producer, settings, name)
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
                poll_timeout_ms=settings.process.poll_timeout_ms,
                commit_interval_s=settings.process.commit_interval_ms / 1000,
                backoff_max_s=settings.process.retry_backoff_max_s,
                drain_s=settings.process.shutdown_drain_s,
                fault=settings.process.fault,
                group=settings.group_id(name),
            ),
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        consumer.subscribe([source_topic], listener=loop.listener())
        settle_garbage_collector()
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
