"""Entry point of the SLA timer process (`guardstream sla`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from guardstream.policy import load_watched
from guardstream.runtime.health import HealthServer
from guardstream.runtime.kafka import make_producer
from guardstream.runtime.settings import Settings
from guardstream.sla.app import SlaWorker, changelog_topic, ensure_changelog

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    expose: Callable[[SlaWorker], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run the SLA worker until `stop`. `expose` receives the worker (tests and the bench)."""
    log.info("starting", extra={"service": "sla", "settings": settings.public_view()})
    registry, reloader = load_watched(
        settings.policy.dir, process="sla", poll_s=settings.policy.poll_s
    )
    if await ensure_changelog(settings):
        log.info("created the SLA table changelog", extra={"topic": changelog_topic(settings)})
    producer = make_producer(settings, client_id="guardstream-sla")
    await producer.start()
    worker: SlaWorker | None = None
    health = HealthServer(
        settings.process.health_port,
        ready=lambda: worker is not None and worker.ready,
        name="sla",
        status=lambda: worker.status() if worker is not None else {},
        host=settings.process.listen_host,
    )
    await health.start()
    reloading = (  # new deadlines apply to items the SLA table receives from then on
        asyncio.create_task(reloader.watch(stop), name="sla-policy-reload")
        if reloader is not None
        else None
    )
    try:
        worker = SlaWorker(settings, registry, producer, clock=clock)
        if expose is not None:
            expose(worker)
        await worker.start()
        await stop.wait()
        log.info("stopping", extra={"service": "sla", **worker.status()})
    finally:
        if reloading is not None:
            reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloading
        if worker is not None:
            await worker.stop()
        await producer.stop()
        await health.close()
