"""Entry point of `guardstream review`: the API and console (uvicorn), the consumer of posts,
review decisions and SLA events, and the background work (round-robin assignment, lock expiry,
outbox relay, post-text and expired-credential purge, the periodic QA sample, the context
indexer that embeds new tasks' texts), in one process.

`/healthz` is live while the process runs; `/readyz` is ready once the store answers and the
consumer holds partitions. Both stay answered under load: the edge (`shield`) sheds everything
else first (413 oversized bodies, 429/503 past the in-flight limits, 422 control characters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from guardstream.contracts.events import utcnow
from guardstream.contracts.topics import TopicNames
from guardstream.policy import load_watched
from guardstream.review import metrics as review_metrics
from guardstream.review.api import install_error_handlers, router
from guardstream.review.casebook_api import router as casebook_router
from guardstream.review.console import COOKIE, ConsoleAuth, install_console
from guardstream.review.consumer import ReviewConsumer, source_topics
from guardstream.review.erase_api import router as erase_router
from guardstream.review.relay import OutboxRelay
from guardstream.review.services.context import INDEX_BATCH, INDEX_INTERVAL_S
from guardstream.review.shield import (
    BodyLimit,
    Edge,
    EdgeCheck,
    InFlightLimit,
    LoginThrottle,
)
from guardstream.review.store import ReviewStore
from guardstream.review.wiring import ReviewServices, review_services
from guardstream.runtime.kafka import make_consumer, make_producer
from guardstream.runtime.loop import BatchHandler, BatchLoop, LoopConfig
from guardstream.runtime.rejections import isolating_rejections
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive
from guardstream.verdict.author_history import RedisAuthorHistory
from guardstream.verdict.cache import RedisVerdictCache

log = logging.getLogger(__name__)


def create_app(
    services: ReviewServices,
    console: ConsoleAuth,
    ready: Callable[[], bool],
    settings: Settings,
) -> FastAPI:
    app = FastAPI(
        title="guardstream review",
        version="1",
        description=(
            "Human review of contested posts: queue by SLA deadline, claims, decisions"
            " (confirm / correct + reason + quick tags), QA re-review. Bearer tokens from"
            " `POST /api/v1/auth/token`; tenant-scoped; every access audited."
        ),
    )
    app.state.review = services
    app.state.settings = settings
    edge = Edge(
        LoginThrottle(
            per_id_per_min=settings.review.edge.login_per_id_per_min,
            per_address_per_min=settings.review.edge.login_per_address_per_min,
            max_keys=settings.review.edge.login_throttle_keys,
        ),
        services.auth.refusals,
    )
    app.state.edge = edge
    # Outermost last: the body limit first, then the character check, then the in-flight
    # limits (a request refused by the first two never takes a slot).
    app.add_middleware(
        InFlightLimit,
        limit=settings.review.edge.max_in_flight,
        anonymous_limit=settings.review.edge.max_in_flight_anonymous,
        session_cookie=COOKIE,
    )
    app.add_middleware(EdgeCheck, refused=edge.refused)
    app.add_middleware(BodyLimit, max_bytes=settings.review.edge.max_body_bytes)
    app.include_router(router)
    app.include_router(erase_router)
    app.include_router(casebook_router)
    install_error_handlers(app)
    install_console(app, console)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"process": "review", "live": True})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ok = ready() and await services.store.ping()
        return JSONResponse({"process": "review", "ready": ok}, status_code=200 if ok else 503)

    return app


@dataclass
class Review:
    """The parts of a running review process (tests reach in through `expose`)."""

    settings: Settings
    services: ReviewServices
    relay: OutboxRelay
    consumer: ReviewConsumer
    app: FastAPI
    handle: BatchHandler  # the consumer's, with refused outputs isolated (verdict.emitter)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's own stop event handles SIGTERM/SIGINT (runtime.process).
        yield


async def _open(settings: Settings, stack: AsyncExitStack) -> Review:
    policies, reloader = load_watched(
        settings.policy.dir, process="review", poll_s=settings.policy.poll_s
    )
    if reloader is not None:  # the console, the consumer and QA decide with the packs in force
        reloader.watch_in(stack)
    services = await stack.enter_async_context(review_services(settings, policies=policies))
    await services.store.claims.set_limit(settings.review.max_claims)
    producer = make_producer(settings, client_id="guardstream-review")
    await producer.start()
    stack.push_async_callback(producer.stop)
    cache = RedisVerdictCache.from_settings(settings)
    stack.push_async_callback(cache.close)
    history = None  # kept only where a pack's rules read it (verdict/author_history.py)
    if any(pack.uses_author_history for pack in policies.packs):
        history = RedisAuthorHistory.from_settings(settings)
        stack.push_async_callback(history.close)
    relay = OutboxRelay(
        services.store,
        producer,
        cache,
        TopicNames(settings.namespace),
        archive=Archive(settings.feedback.dir),
        history=history,
        human_ttl_s=settings.review.human_verdict_ttl_s,
        queued=services.queued,
    )
    secret = settings.review.session_secret
    key = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
    console = ConsoleAuth(key, settings.review.session_ttl_s, secure=settings.review.cookie_secure)
    handler = ReviewConsumer(settings, producer, services.store, policies)
    ready = {"assigned": False}
    app = create_app(services, console, lambda: ready["assigned"], settings)
    app.state.ready_flags = ready
    app.state.author_history = history  # the task page's panel
    handle = isolating_rejections(handler.handle, producer, settings, "review")
    return Review(settings, services, relay, handler, app, handle)


async def _background(review: Review, stop: asyncio.Event) -> None:
    """Round-robin assignment, lock expiry, the purge of texts and of expired tokens and
    sessions, and QA sampling, on a timer."""
    settings = review.settings
    services = review.services
    ttl = timedelta(seconds=settings.review.post_text_ttl_s)
    rounds = 0
    while not stop.is_set():
        try:
            await services.tasks.release_expired_locks()
            await services.tasks.assign_round_robin()
            if rounds % 5 == 0:  # counting every open task is not free: every 5th round
                await services.store.posts.purge(utcnow() - ttl)
                await services.auth.purge_expired()
                await _refresh_gauges(services.store)
                # The QA sample of the last finished month (week): one indexed insert that
                # finds the batch there on every round but the first of a period.
                await services.qa.tick()
            rounds += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a database blip must not stop the timer
            log.warning("review background work failed", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.review.assign_interval_s)


async def _index_context(review: Review, stop: asyncio.Event) -> None:
    """Fingerprint and embed the texts of new tasks (similar earlier decisions on the task
    page), apart from `_background`: embedding a batch takes a second or two of CPU in a
    worker thread, which must not hold up assignment and lock expiry. A full batch is followed
    by the next at once; otherwise the loop waits `INDEX_INTERVAL_S` (a task read before its
    turn is embedded on the spot, so only its neighbours-to-be wait)."""
    context = review.services.context
    interval = INDEX_INTERVAL_S
    while not stop.is_set():
        try:
            stored = await context.index()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a database blip must not stop the indexer
            log.warning("review context indexing failed", extra={"error": type(exc).__name__})
            stored = 0
        if stored < INDEX_BATCH:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


async def _refresh_gauges(store: ReviewStore) -> None:
    depth = await store.tasks.depth_by_tenant()
    qa = await store.reviews.agreement_by_tenant()
    review_metrics.queue_depth_by_tenant.clear()
    review_metrics.queue_depth_by_tenant.update(depth)
    review_metrics.qa_agreement_by_tenant.clear()
    review_metrics.qa_agreement_by_tenant.update(
        {tenant: agreed / compared for tenant, (compared, agreed) in qa.items() if compared}
    )


async def run(
    settings: Settings, stop: asyncio.Event, *, expose: Callable[[Review], None] | None = None
) -> None:
    """Serve the review process until `stop`."""
    log.info("starting", extra={"service": "review", "settings": settings.public_view()})
    async with AsyncExitStack() as stack:
        review = await _open(settings, stack)
        if expose is not None:
            expose(review)
        consumer = make_consumer(
            settings,
            group_id=settings.group_id("review"),
            client_id="guardstream-review",
            max_records=settings.review.batch_max,
        )
        loop = BatchLoop(
            consumer,
            review.handle,
            LoopConfig(
                name="review",
                max_records=settings.review.batch_max,
                max_in_flight=settings.review.batch_max * 4,
                poll_timeout_ms=settings.process.poll_timeout_ms,
                backoff_max_s=settings.process.retry_backoff_max_s,
                drain_s=settings.process.shutdown_drain_s,
                fault=settings.process.fault,
            ),
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        consumer.subscribe(source_topics(settings), listener=loop.listener())
        flags = review.app.state.ready_flags
        server = _Server(
            uvicorn.Config(
                review.app,
                host=settings.review.host,
                port=settings.review.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                # The scheme and client address a trusted TLS proxy reports (Secure cookies,
                # audit); anyone else's X-Forwarded-* headers are ignored.
                proxy_headers=True,
                forwarded_allow_ips=settings.review.forwarded_allow_ips,
                limit_concurrency=settings.review.edge.max_connections,
            )
        )

        async def watch_ready() -> None:
            while not stop.is_set():
                flags["assigned"] = bool(consumer.assignment())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)

        async def stop_server() -> None:
            await stop.wait()
            server.should_exit = True

        tasks = [
            asyncio.create_task(loop.run(stop), name="review-consumer"),
            asyncio.create_task(server.serve(), name="review-http"),
            asyncio.create_task(_background(review, stop), name="review-background"),
            asyncio.create_task(_index_context(review, stop), name="review-context"),
            asyncio.create_task(
                review.relay.run(stop, settings.review.assign_interval_s), name="review-relay"
            ),
            asyncio.create_task(watch_ready(), name="review-ready"),
            asyncio.create_task(stop_server(), name="review-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    stop.set()
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await review.relay.drain()
        log.info("stopping", extra={"service": "review", **review.consumer.counts})
