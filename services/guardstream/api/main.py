"""Entry point of `guardstream api`: the moderation API (uvicorn) on `GUARDSTREAM_API_HOST`
and `GUARDSTREAM_API_PORT`, with the stores, a producer and a client of the scorer's
interactive door, and the loop that keeps the latest-decision index (`api.decisions`);
`/healthz` and `/readyz` on `GUARDSTREAM_HEALTH_PORT` as every process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack

import httpx
import uvicorn
from aiokafka import AIOKafkaProducer

from guardstream.api.app import create_app
from guardstream.api.decisions import GROUP, DecisionIndexer, action_topics
from guardstream.api.moderator import Moderator
from guardstream.api.telemetry import inject_trace
from guardstream.model.guard import served_model_id
from guardstream.runtime import metrics
from guardstream.runtime.health import HealthServer
from guardstream.runtime.kafka import make_consumer, make_producer
from guardstream.runtime.loop import BatchLoop, LoopConfig
from guardstream.runtime.rejections import isolating_rejections
from guardstream.runtime.settings import Settings
from guardstream.verdict.latest import LatestDecisions
from guardstream.verdict.stores import Stores

log = logging.getLogger(__name__)


async def _index_decisions(
    settings: Settings, producer: AIOKafkaProducer, latest: LatestDecisions, stack: AsyncExitStack
) -> BatchLoop:
    """The loop that keeps the latest-decision index (`api.decisions`), subscribed."""
    indexer = DecisionIndexer(settings, producer, latest)
    metrics.observe_counts("guardstream.api.decisions_indexed", indexer.counts)
    consumer = make_consumer(
        settings,
        group_id=settings.group_id(GROUP),
        client_id="guardstream-api",
        max_records=500,
    )
    loop = BatchLoop(
        consumer,
        isolating_rejections(indexer.handle, producer, settings, GROUP),
        LoopConfig(
            name=GROUP,
            max_records=500,
            max_in_flight=2000,
            poll_timeout_ms=settings.process.poll_timeout_ms,
            backoff_max_s=settings.process.retry_backoff_max_s,
            drain_s=settings.process.shutdown_drain_s,
            group=settings.group_id(GROUP),
        ),
    )
    await consumer.start()
    stack.push_async_callback(consumer.stop)
    consumer.subscribe(action_topics(settings), listener=loop.listener())
    return loop


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's own stop event handles SIGTERM/SIGINT (runtime.process).
        yield


async def run(
    settings: Settings, stop: asyncio.Event, *, expose: Callable[[Moderator], None] | None = None
) -> None:
    """Serve the API until `stop`. `expose` receives the moderator (tests read its counts)."""
    log.info("starting", extra={"service": "api", "settings": settings.public_view()})
    async with AsyncExitStack() as stack:
        producer = make_producer(settings, client_id="guardstream-api")
        await producer.start()
        stack.push_async_callback(producer.stop)
        stores = Stores.open(settings, stack)
        scorer = httpx.AsyncClient(
            base_url=settings.api.scorer_url,
            trust_env=False,  # an internal call: no proxy from the environment
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            event_hooks={"request": [inject_trace]},  # the scorer's span joins the request's
        )
        stack.push_async_callback(scorer.aclose)
        moderator = Moderator(settings, producer, stores, scorer, model=served_model_id(settings))
        metrics.observe_counts("guardstream.api.outcomes", moderator.counts)
        if expose is not None:
            expose(moderator)
        latest = LatestDecisions(settings)
        stack.push_async_callback(latest.close)
        app = create_app(
            moderator,
            latest,
            max_body_bytes=settings.api.max_body_bytes,
            batch_max=settings.api.batch_max,
            retry_after_s=settings.api.retry_after_s,
        )
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.api.host,
                port=settings.api.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        health = HealthServer(
            settings.process.health_port,
            ready=lambda: server.started,
            name="api",
            status=lambda: dict(moderator.counts),
            host=settings.process.listen_host,
        )
        await health.start()
        stack.push_async_callback(health.close)
        indexing = await _index_decisions(settings, producer, latest, stack)

        async def stop_server() -> None:
            await stop.wait()
            server.should_exit = True

        tasks = [
            asyncio.create_task(server.serve(), name="api-http"),
            asyncio.create_task(indexing.run(stop), name="api-decisions"),
            asyncio.create_task(stop_server(), name="api-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("stopping", extra={"service": "api", **moderator.counts})
