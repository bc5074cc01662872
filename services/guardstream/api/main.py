"""Entry point of `guardstream api`: the moderation API (uvicorn) on `GUARDSTREAM_API_HOST`
and `GUARDSTREAM_API_PORT`, with the stores, a producer and a client of the scorer's
interactive door, the loop that keeps the latest-decision index (`api.decisions`) and the
decision callbacks' delivery loop (`api.delivery`, over the API's PostgreSQL tables);
`/healthz` and `/readyz` on `GUARDSTREAM_HEALTH_PORT` as every process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack

import asyncpg
import httpx
import uvicorn
from aiokafka import AIOKafkaProducer

from guardstream.api import db as api_db
from guardstream.api.app import create_app
from guardstream.api.decisions import GROUP, DecisionIndexer, action_topics
from guardstream.api.delivery import open_callbacks
from guardstream.api.gate import OpenApiRefused, open_gate
from guardstream.api.moderator import Moderator
from guardstream.api.telemetry import inject_trace
from guardstream.contracts.events import Decision
from guardstream.model.guard import served_model_id
from guardstream.runtime import metrics
from guardstream.runtime.health import HealthServer
from guardstream.runtime.kafka import INTERACTIVE_LINGER_MS, make_consumer, make_producer
from guardstream.runtime.loop import BatchLoop, LoopConfig
from guardstream.runtime.rejections import isolating_rejections
from guardstream.runtime.settings import Settings
from guardstream.verdict.latest import LatestDecisions
from guardstream.verdict.stores import Stores

log = logging.getLogger(__name__)

# What stops the process at start with "cannot start" (exit 3): the key store unreachable or
# refusing us, a port taken, keys off beyond the loopback.
START_ERRORS: tuple[type[Exception], ...] = (OSError, asyncpg.PostgresError, OpenApiRefused)


async def _index_decisions(
    settings: Settings,
    producer: AIOKafkaProducer,
    latest: LatestDecisions,
    stack: AsyncExitStack,
    callbacks: Callable[[Sequence[Decision]], Awaitable[None]],
) -> BatchLoop:
    """The loop that keeps the latest-decision index (`api.decisions`), subscribed."""
    indexer = DecisionIndexer(settings, producer, latest, callbacks)
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
        producer = make_producer(
            settings, client_id="guardstream-api", linger_ms=INTERACTIVE_LINGER_MS
        )
        await producer.start()
        stack.push_async_callback(producer.stop)
        stores = Stores.open(settings, stack, process="api")
        stores.watch(stack)
        scorer = httpx.AsyncClient(
            base_url=settings.api.scorer_url,
            trust_env=False,  # an internal call: no proxy from the environment
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            event_hooks={"request": [inject_trace]},  # the scorer's span joins the request's
        )
        stack.push_async_callback(scorer.aclose)
        pool = await api_db.connect(settings)
        stack.push_async_callback(pool.close)
        webhooks, deliveries = open_callbacks(settings, pool, producer, stack)
        moderator = Moderator(
            settings,
            producer,
            stores,
            scorer,
            model=served_model_id(settings),
            watch=webhooks.watch,
        )
        metrics.observe_counts("guardstream.api.outcomes", moderator.counts)
        if expose is not None:
            expose(moderator)
        latest = LatestDecisions(settings)
        stack.push_async_callback(latest.close)
        gate = await open_gate(settings, pool, stack)
        metrics.observe_counts("guardstream.api.gate", gate.counts)
        app = create_app(
            moderator,
            latest,
            max_body_bytes=settings.api.max_body_bytes,
            batch_max=settings.api.batch_max,
            retry_after_s=settings.api.retry_after_s,
            gate=gate,
            policies=stores.policies,
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
            status=lambda: {
                **moderator.counts,
                **{f"gate_{k}": n for k, n in gate.counts.items()},
                **stores.gauges(),
            },
            host=settings.process.listen_host,
        )
        await health.start()
        stack.push_async_callback(health.close)
        indexing = await _index_decisions(settings, producer, latest, stack, deliveries.enqueue)

        async def stop_server() -> None:
            await stop.wait()
            server.should_exit = True

        tasks = [
            asyncio.create_task(server.serve(), name="api-http"),
            asyncio.create_task(indexing.run(stop), name="api-decisions"),
            asyncio.create_task(deliveries.run(stop), name="api-webhooks"),
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
