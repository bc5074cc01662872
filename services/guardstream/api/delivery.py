"""Decision callbacks, the I/O: the PostgreSQL tables (`api/migrations/0002_webhooks.sql`) and
the delivery loop every API replica runs.

- The moderator *watches* the posts it sends to review or escalates (`webhook_watch`).
- The action-topic consumer (`api.decisions`) *enqueues* a delivery for each decision a human
  or the SLA timer made on a watched post of a tenant with a webhook (`webhook_deliveries`, an
  outbox keyed by the decision's event id: a replayed decision is not delivered twice).
- The loop *claims* due deliveries (`FOR UPDATE SKIP LOCKED`, replicas share the work), counts
  the try and leases the row past the POST's timeout before it sends, so a replica that dies
  mid-POST leaves the row to another one after the lease: at least once, never lost.

| a try ends with                          | then                                                  |
|------------------------------------------|-------------------------------------------------------|
| a 2xx answer                             | `delivered`                                           |
| any other answer, no answer, a refused   | tried again after `backoff_s` (pending)               |
| address, while tries are left            |                                                       |
| the same, on the last try                | a DLQ record (origin `webhook:<tenant>`), then `dead` |
| the webhook removed since enqueueing     | a DLQ record (`webhook_removed`), then `dead`         |
| the DLQ refusing the record              | left pending: after its lease it is dead-lettered     |
|                                          | again, without another POST                           |
| PostgreSQL failing                       | logged, the round is tried again after `poll_s`       |
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer, ConsumerRecord

from guardstream.api.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    IpAddress,
    address_problem,
    backoff_s,
    pinned,
    signature,
)
from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import ContractError, Decision, Source
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime import metrics
from guardstream.runtime.kafka import dead_letter
from guardstream.runtime.postgres import DB_ERRORS
from guardstream.runtime.settings import Settings, WebhookSettings

log = logging.getLogger(__name__)

# Decisions that end a contested post's wait: the callback's events.
FINAL_SOURCES = frozenset((Source.HUMAN, Source.SLA_TIMEOUT))
PROCESS = "api-webhooks"  # the DLQ record's consumer (as a group id)
LEASE_MARGIN_S = 30.0  # a claimed row's lease beyond the POST's timeout
USER_AGENT = "guardstream-webhooks/1"


class Status:
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    ALL = (PENDING, DELIVERED, DEAD)


class DlqReason:
    """The DLQ reasons of a dead delivery."""

    REFUSED = "webhook_refused"  # the receiver answered, never with a 2xx
    UNREACHABLE = "webhook_unreachable"  # no answer: connection, TLS, timeout
    FORBIDDEN = "webhook_forbidden_address"  # the host resolved to a non-public address
    REMOVED = "webhook_removed"  # the tenant removed its webhook before delivery


@dataclass(frozen=True, slots=True)
class Watched:
    """A post the API sent to review (or on to the larger model): its final decision is
    called back."""

    tenant: str
    post_id: str
    policy: str


@dataclass(frozen=True, slots=True)
class Registered:
    tenant: str
    url: str
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    tenant: str
    event_id: str
    post_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    tenant: str
    event_id: str
    payload: bytes
    attempts: int  # this try included
    last_error: str | None
    url: str | None  # None: the webhook was removed
    secret: str | None


@dataclass(frozen=True, slots=True)
class Tried:
    """One try's result: `error` None when delivered, else what went wrong (no payload)."""

    error: str | None = None
    reason: str = DlqReason.REFUSED


class WebhookStore:
    """The three tables, on a pool whose connections work in the API's schema."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def register(self, tenant: str, url: str, secret: str) -> None:
        """Set (or replace, with a new secret) the tenant's webhook; enabled again if removed."""
        await self._db.execute(
            "INSERT INTO webhooks (tenant, url, secret) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant) DO UPDATE SET url = $2, secret = $3,"
            " created_at = now(), disabled_at = NULL",
            tenant,
            url,
            secret,
        )

    async def remove(self, tenant: str) -> bool:
        """Disable the tenant's webhook; False if it had none enabled."""
        status = await self._db.execute(
            "UPDATE webhooks SET disabled_at = now() WHERE tenant = $1 AND disabled_at IS NULL",
            tenant,
        )
        return status.split()[-1] != "0"

    async def registered(self) -> list[Registered]:
        rows = await self._db.fetch(
            "SELECT tenant, url, created_at, disabled_at FROM webhooks ORDER BY tenant"
        )
        return [Registered(**dict(row)) for row in rows]

    async def watch(self, posts: Sequence[Watched]) -> None:
        """Remember posts whose final decision is called back; `TransientError` on failure."""
        if not posts:
            return
        try:
            await self._db.execute(
                "INSERT INTO webhook_watch (tenant, post_id, policy)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
                " ON CONFLICT (tenant, post_id) DO UPDATE SET policy = EXCLUDED.policy,"
                " watched_at = now()",
                [p.tenant for p in posts],
                [p.post_id for p in posts],
                [p.policy for p in posts],
            )
        except DB_ERRORS as exc:
            raise TransientError(f"webhook watch not recorded: {type(exc).__name__}") from exc

    async def enqueue(self, decisions: Sequence[Decision]) -> int:
        """One delivery for each final decision (human, SLA timer) on a watched post of a
        tenant with an enabled webhook, once per event id; the number enqueued now.
        `TransientError` when PostgreSQL fails (the consumer retries the batch)."""
        finals = [d for d in decisions if d.source in FINAL_SOURCES]
        if not finals:
            return 0
        try:
            rows = await self._db.fetch(
                "INSERT INTO webhook_deliveries (tenant, event_id, post_id, payload)"
                " SELECT d.tenant, d.event_id, d.post_id, d.payload"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])"
                "  AS d(tenant, event_id, post_id, payload)"
                " JOIN webhook_watch w ON w.tenant = d.tenant AND w.post_id = d.post_id"
                " JOIN webhooks h ON h.tenant = d.tenant AND h.disabled_at IS NULL"
                " ON CONFLICT (tenant, event_id) DO NOTHING RETURNING id",
                [d.tenant for d in finals],
                [d.event_id for d in finals],
                [d.post_id for d in finals],
                [d.to_json() for d in finals],
            )
        except DB_ERRORS as exc:
            raise TransientError(f"webhook delivery not enqueued: {type(exc).__name__}") from exc
        return len(rows)

    async def claim(self, limit: int, lease_s: float) -> list[Claimed]:
        """Up to `limit` due deliveries, each try counted and leased for `lease_s`."""
        rows = await self._db.fetch(
            "WITH due AS ("
            " SELECT id FROM webhook_deliveries"
            " WHERE status = 'pending' AND next_attempt_at <= now()"
            " ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE webhook_deliveries d"
            " SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)"
            " FROM due WHERE d.id = due.id"
            " RETURNING d.id, d.tenant, d.event_id, d.payload, d.attempts, d.last_error,"
            " (SELECT url FROM webhooks h WHERE h.tenant = d.tenant AND h.disabled_at IS NULL)"
            "  AS url,"
            " (SELECT secret FROM webhooks h WHERE h.tenant = d.tenant AND h.disabled_at IS NULL)"
            "  AS secret",
            limit,
            lease_s,
        )
        return [Claimed(**dict(row)) for row in rows]

    async def delivered(self, delivery: int) -> None:
        await self._db.execute(
            "UPDATE webhook_deliveries SET status = 'delivered', finished_at = now(),"
            " last_error = NULL WHERE id = $1",
            delivery,
        )

    async def retry(self, delivery: int, wait_s: float, error: str) -> None:
        await self._db.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2),"
            " last_error = $3 WHERE id = $1",
            delivery,
            wait_s,
            error,
        )

    async def failed_last(self, delivery: int, error: str) -> None:
        """The last try failed: its error kept before the DLQ record is sent."""
        await self._db.execute(
            "UPDATE webhook_deliveries SET last_error = $2 WHERE id = $1", delivery, error
        )

    async def dead(self, delivery: int, error: str) -> None:
        await self._db.execute(
            "UPDATE webhook_deliveries SET status = 'dead', finished_at = now(),"
            " last_error = $2 WHERE id = $1",
            delivery,
            error,
        )

    async def deliveries(
        self, tenant: str, status: str | None = None, limit: int = 100
    ) -> list[DeliveryRow]:
        rows = await self._db.fetch(
            "SELECT id, tenant, event_id, post_id, status, attempts, next_attempt_at,"
            " last_error, created_at FROM webhook_deliveries"
            " WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)"
            " ORDER BY id DESC LIMIT $3",
            tenant,
            status,
            limit,
        )
        return [DeliveryRow(**dict(row)) for row in rows]

    async def prune(self, retention_days: int) -> int:
        """Forget finished deliveries and watched posts older than `retention_days`."""
        done = await self._db.execute(
            "DELETE FROM webhook_deliveries WHERE status <> 'pending'"
            " AND finished_at < now() - make_interval(days => $1)",
            retention_days,
        )
        watched = await self._db.execute(
            "DELETE FROM webhook_watch WHERE watched_at < now() - make_interval(days => $1)",
            retention_days,
        )
        return int(done.split()[-1]) + int(watched.split()[-1])


class Resolver(Protocol):
    async def __call__(self, host: str, port: int) -> list[IpAddress]: ...


async def resolve(host: str, port: int) -> list[IpAddress]:
    """The addresses `host` resolves to now (what the POST will connect to)."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found]


class DeliveryLoop:
    """Claims due deliveries and POSTs them, until stopped; `wake` after enqueueing."""

    def __init__(
        self,
        settings: Settings,
        store: WebhookStore,
        client: httpx.AsyncClient,
        producer: AIOKafkaProducer,
        *,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hooks: WebhookSettings = settings.webhooks
        self._store = store
        self._client = client
        self._producer = producer
        self._resolver = resolver
        self._clock = clock
        self._dlq_topic = TopicNames(settings.namespace)[Topic.DLQ]
        self._consumer = settings.group_id(PROCESS)
        self._kafka = settings.kafka
        self._woken = asyncio.Event()
        self._pruned_at = 0.0
        self.counts: dict[str, int] = dict.fromkeys(
            ("enqueued", "delivered", "retried", "dead", "db_errors"), 0
        )

    def wake(self) -> None:
        self._woken.set()

    async def enqueue(self, decisions: Sequence[Decision]) -> None:
        """The action-topic consumer's hook (`api.decisions`): enqueue the deliveries of
        `decisions` and wake the loop for them; `TransientError` when PostgreSQL fails."""
        count = await self._store.enqueue(decisions)
        if count:
            self.counts["enqueued"] += count
            self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.deliver_due()
                await self._maybe_prune()
            except DB_ERRORS as exc:
                self.counts["db_errors"] += 1
                log.warning(
                    "webhook deliveries: database failed", extra={"error": type(exc).__name__}
                )
                busy = 0
            if busy:
                continue  # more may be due already
            self._woken.clear()
            waiting = asyncio.create_task(self._woken.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait(
                (waiting, stopping), timeout=self._hooks.poll_s, return_when=asyncio.FIRST_COMPLETED
            )
            waiting.cancel()
            stopping.cancel()

    async def deliver_due(self) -> int:
        """One round: claim what is due, try each, record each; the number claimed."""
        claimed = await self._store.claim(self._hooks.batch, self._hooks.timeout_s + LEASE_MARGIN_S)
        await asyncio.gather(*(self._settle(item) for item in claimed))
        return len(claimed)

    async def _settle(self, item: Claimed) -> None:
        last = item.attempts >= self._hooks.max_attempts
        if item.url is None or item.secret is None:
            tried = Tried("the webhook was removed", DlqReason.REMOVED)
            last = True
        elif item.attempts > self._hooks.max_attempts:
            # Its last try failed before, but its DLQ record was not sent: send it now.
            tried = _untagged(item.last_error)
        else:
            tried = await self.attempt(item.url, item.secret, item.event_id, item.payload)
        if tried.error is None:
            await self._store.delivered(item.id)
            self.counts["delivered"] += 1
            return
        log.info(
            "webhook delivery failed",
            extra={
                "tenant": item.tenant,
                "event_id": item.event_id,
                "attempt": item.attempts,
                "error": tried.error,
            },
        )
        if not last:
            wait = backoff_s(item.attempts, self._hooks.backoff_base_s, self._hooks.backoff_cap_s)
            await self._store.retry(item.id, wait, tried.error)
            self.counts["retried"] += 1
            return
        await self._store.failed_last(item.id, _tagged(tried))
        try:
            await self._dead_letter(item, tried)
        except TransientError:
            log.warning(
                "webhook DLQ record not sent; tried again after the lease",
                extra={"tenant": item.tenant, "event_id": item.event_id},
            )
            return
        await self._store.dead(item.id, _tagged(tried))
        self.counts["dead"] += 1
        metrics.dead_letters.add(1, {"reason": tried.reason, "consumer": self._consumer})

    async def attempt(self, url: str, secret: str, event_id: str, payload: bytes) -> Tried:
        """One signed POST of `payload` to `url`, at the address its host resolved to and
        was judged by (any address, with `GUARDSTREAM_WEBHOOK_ALLOW_PRIVATE`)."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event_id,
            SIGNATURE_HEADER: signature(secret, payload, int(self._clock())),
        }
        address = await self._address(url)
        if isinstance(address, Tried):
            return address
        pin = pinned(url, address)
        headers["Host"] = pin.host
        extensions = {} if pin.sni is None else {"sni_hostname": pin.sni}
        try:
            # The whole try within the timeout (a receiver trickling its answer gains
            # nothing), and its body never read (a huge one costs nothing).
            async with (
                asyncio.timeout(self._hooks.timeout_s),
                self._client.stream(
                    "POST",
                    pin.url,
                    content=payload,
                    headers=headers,
                    timeout=self._hooks.timeout_s,
                    extensions=extensions,
                ) as answer,
            ):
                status = answer.status_code
        except (httpx.TimeoutException, TimeoutError):
            return Tried(f"no answer within {self._hooks.timeout_s} s", DlqReason.UNREACHABLE)
        except httpx.HTTPError as exc:
            return Tried(f"not reachable ({type(exc).__name__})", DlqReason.UNREACHABLE)
        if 200 <= status < 300:
            return Tried()
        return Tried(f"answered {status}", DlqReason.REFUSED)

    async def _address(self, url: str) -> IpAddress | Tried:
        """The address to send to, or why none may be (unless private addresses are allowed:
        any address of the host that is not public)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            return Tried(f"the host does not resolve ({type(exc).__name__})", DlqReason.UNREACHABLE)
        if not addresses:
            return Tried("the host resolves to nothing", DlqReason.UNREACHABLE)
        problem = None if self._hooks.allow_private else address_problem(addresses)
        return addresses[0] if problem is None else Tried(problem, DlqReason.FORBIDDEN)

    async def _dead_letter(self, item: Claimed, tried: Tried) -> None:
        origin: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=f"webhook:{item.tenant}",
            partition=0,
            offset=item.id,
            timestamp=int(self._clock() * 1000),
            timestamp_type=0,
            key=item.event_id.encode(),
            value=item.payload,
            checksum=None,
            serialized_key_size=len(item.event_id),
            serialized_value_size=len(item.payload),
            headers=(),
        )
        try:
            sent = await dead_letter(
                self._producer,
                self._dlq_topic,
                origin,
                ContractError(tried.reason, tried.error or "failed"),
                consumer=self._consumer,
                kafka=self._kafka,
                attempts=min(item.attempts, self._hooks.max_attempts),
            )
            await sent
        except Exception as exc:  # any failure to send: left pending
            raise TransientError(f"DLQ record not sent: {type(exc).__name__}") from exc

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < 3600:
            return
        self._pruned_at = now
        await self._store.prune(self._hooks.retention_days)


def _tagged(tried: Tried) -> str:
    return f"{tried.reason}: {tried.error}"


def _untagged(error: str | None) -> Tried:
    """The failed try whose `_tagged` error is `error`."""
    reason, _, detail = (error or "").partition(": ")
    known = (DlqReason.REFUSED, DlqReason.UNREACHABLE, DlqReason.FORBIDDEN, DlqReason.REMOVED)
    if reason in known and detail:
        return Tried(detail, reason)
    return Tried(error or "tries exhausted", DlqReason.REFUSED)


WatchPosts = Callable[[Sequence[Watched]], Awaitable[None]]


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client deliveries are sent with: no proxy from the environment, no redirects
    (a redirect could lead anywhere the URL rule refuses) and no kept connections (one is
    made for one host's name, TLS SNI included, at the address judged for it, and must not
    carry another's request)."""
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=settings.webhooks.batch * 2, max_keepalive_connections=0
        ),
    )


def open_callbacks(
    settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer, stack: AsyncExitStack
) -> tuple[WebhookStore, DeliveryLoop]:
    """The API process's callbacks: the store on its pool and the delivery loop with its own
    HTTP client (`webhook_client`)."""
    client = webhook_client(settings)
    stack.push_async_callback(client.aclose)
    store = WebhookStore(pool)
    loop = DeliveryLoop(settings, store, client, producer)
    metrics.observe_counts("guardstream.api.webhooks", loop.counts)
    return store, loop
