"""The review API's edge: what a request must pass before a handler, a buffer or the database.

Guarantees, each an ASGI layer or a small in-process object (no I/O of its own):
- a body over `max_bytes` is answered 413 as soon as its declared length or its streamed bytes
  pass the limit; nothing past the limit is read and nothing is buffered here;
- a control character or lone surrogate in the path or the query is answered 422 before
  routing (PostgreSQL refuses NUL; an id never holds one);
- at most `limit` requests run at once (503 past it), those without credentials at most
  `anonymous_limit` (429 past it), both at once and with Retry-After; health probes are exempt;
- logins are throttled per reviewer id and per client address (token buckets, at most
  `max_keys` each): 429 + Retry-After before any password is hashed;
- refused attempts are audited at a bounded rate; those over it are counted into the next row.

The throttle is per process: with N replicas a client gets N times the rate. That is the
price of answering a refusal without a database write, which is what an attack is made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardstream.contracts.errors import TransientError
from guardstream.review import metrics as review_metrics
from guardstream.review.store.audit import AuditFailed

log = logging.getLogger(__name__)

# Ids, query values and paths: no C0/C1 control character, no DEL, no lone surrogate.
_ID_EXCLUDES = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
# Free text (a reason): tab and line breaks are text; other controls and lone surrogates not.
_TEXT_EXCLUDES = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff"
# Passwords are only hashed: anything UTF-8 can encode.
_UNENCODABLE = r"\ud800-\udfff"
_NOT_IN_ID = re.compile(f"[{_ID_EXCLUDES}]")
_NOT_IN_TEXT = re.compile(f"[{_TEXT_EXCLUDES}]")
_NOT_IN_SECRET = re.compile(f"[{_UNENCODABLE}]")
# The same rules as JSON Schema patterns for the OpenAPI document, less the lone surrogates:
# an ECMA pattern cannot name them, and a JSON text of valid Unicode holds none.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

EXEMPT = frozenset({"/healthz", "/readyz"})


def identifier(value: str) -> str:
    """A pydantic after-validator: `value` unchanged, or ValueError (a 422) on a control char."""
    if _NOT_IN_ID.search(value):
        raise ValueError("control characters and lone surrogates are not allowed")
    return value


def free_text(value: str) -> str:
    if _NOT_IN_TEXT.search(value):
        raise ValueError("control characters and lone surrogates are not allowed")
    return value


def secret_text(value: str) -> str:
    if _NOT_IN_SECRET.search(value):
        raise ValueError("lone surrogates are not allowed")
    return value


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    raw = orjson.dumps(body)
    pairs = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    pairs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": raw})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class BodyLimit:
    """413 for a body over `max_bytes`, declared (Content-Length) or streamed (chunked).

    A streamed body is counted as the app reads it; past the limit the app is told the client
    left, and whatever it answers is replaced by the 413. Before the 413 is finished at most
    `max_bytes` more are read and dropped for up to a second (a client a little over the limit
    then reads its answer instead of a reset); then the connection is closed, so the rest of
    an oversized body is never read.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, receive: Receive, send: Send, more: bool) -> None:
        review_metrics.shed.add(1, {"reason": "body_too_large"})
        raw = orjson.dumps({"detail": f"request body over {self.max_bytes} bytes", "field": "body"})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(raw)),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        left = self.max_bytes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while more and left > 0:
                    message = await receive()
                    left -= len(message.get("body", b""))
                    more = message["type"] == "http.request" and message.get("more_body", False)
        await send({"type": "http.response.body", "body": raw})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(receive, send, more=True)
            return
        seen = 0
        more = True  # the client has more body to send
        over = False  # the body passed the limit
        started = False  # a response was started (the app's or the 413)
        replaced = False  # the 413 was sent instead of the app's answer

        async def counted() -> Message:
            nonlocal seen, over, more
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            more = message["type"] == "http.request" and message.get("more_body", False)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if over and not started:
                started = replaced = True
                await self._refuse(receive, send, more)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            # The app may raise on the disconnect it was told about (a form read in a
            # dependency); that is the 413, not a server error.
            if not over:
                raise
        if over and not started:
            await self._refuse(receive, send, more)


class EdgeCheck:
    """422 for a control character or lone surrogate in the path or in a query name or value,
    before routing; `refused` is told where (never what), to audit it."""

    def __init__(
        self, app: ASGIApp, *, refused: Callable[[str, str], Awaitable[None]] | None = None
    ) -> None:
        self.app = app
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = _hostile_part(scope)
            if where is not None:
                review_metrics.shed.add(1, {"reason": "control_character"})
                if self.refused is not None:
                    await self.refused(where, "control character")
                await send_json(
                    send,
                    422,
                    {
                        "detail": f"control characters are not allowed in the {where}",
                        "field": where,
                    },
                )
                return
        await self.app(scope, receive, send)


def _hostile_part(scope: Scope) -> str | None:
    """Where the request holds a control character or bytes that are not UTF-8 (which the
    server would quietly turn into U+FFFD), or None."""
    try:
        raw_path = scope.get("raw_path")
        path = unquote_to_bytes(raw_path).decode() if raw_path else scope["path"]
    except UnicodeDecodeError:
        return "path"
    if _NOT_IN_ID.search(path) or _NOT_IN_ID.search(scope["path"]):
        return "path"
    query = scope.get("query_string", b"").decode("latin-1")
    # Decoded as Starlette decodes it for the handlers (percent escapes, UTF-8), but strictly.
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return "query"
    for name, value in pairs:
        if _NOT_IN_ID.search(name) or _NOT_IN_ID.search(value):
            return "query"
    return None


class InFlightLimit:
    """At most `limit` requests at once (503 past it) and at most `anonymous_limit` of them
    without a credential (429 past it), answered at once. A forged credential only moves a
    request to the shared budget; health probes are never refused."""

    def __init__(
        self, app: ASGIApp, *, limit: int, anonymous_limit: int, session_cookie: str
    ) -> None:
        self.app = app
        self.limit = limit
        self.anonymous_limit = anonymous_limit
        self._cookie = session_cookie.encode() + b"="
        self.running = 0
        self.anonymous = 0

    def _anonymous(self, scope: Scope) -> bool:
        if _header(scope, b"authorization") is not None:
            return False
        cookie = _header(scope, b"cookie")
        return cookie is None or self._cookie not in cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        anonymous = self._anonymous(scope)
        if self.running >= self.limit:
            review_metrics.shed.add(1, {"reason": "busy"})
            await send_json(
                send, 503, {"detail": "server busy: retry shortly"}, {"retry-after": "1"}
            )
            return
        if anonymous and self.anonymous >= self.anonymous_limit:
            review_metrics.shed.add(1, {"reason": "anonymous_busy"})
            await send_json(
                send,
                429,
                {"detail": "too many requests without credentials: retry shortly"},
                {"retry-after": "1"},
            )
            return
        self.running += 1
        self.anonymous += anonymous
        try:
            await self.app(scope, receive, send)
        finally:
            self.running -= 1
            self.anonymous -= anonymous


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Buckets:
    """Token buckets by key: `burst` tokens, refilled at `per_s`. At most `max_keys` are kept,
    the least recently used dropped first (a bucket untouched for burst/per_s seconds is full,
    the same as none)."""

    def __init__(
        self,
        burst: float,
        per_s: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0 when a token was taken; else the seconds until one will be there."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.per_s)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.per_s


class Throttled(TransientError):
    """Too many login attempts for this id or from this address: 429 with Retry-After."""

    def __init__(self, retry_after_s: float, scope: str) -> None:
        super().__init__(scope)
        self.retry_after = max(1, math.ceil(retry_after_s))
        self.scope = scope


def address_key(host: str | None) -> str:
    """The throttle's key for a client address: IPv4 as is, IPv6 by its /64 (one host holds a
    whole /64)."""
    if not host:
        return "?"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """Per-id and per-address login budgets (each `per_min` a minute, burst the same). The
    address is charged first, so one address cannot drain many ids' budgets for free."""

    def __init__(
        self,
        *,
        per_id_per_min: int,
        per_address_per_min: int,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.by_id = Buckets(per_id_per_min, per_id_per_min / 60, max_keys, clock)
        self.by_address = Buckets(per_address_per_min, per_address_per_min / 60, max_keys, clock)

    def admit(self, reviewer_id: str, host: str | None) -> None:
        """Take one attempt from both budgets, or raise `Throttled`."""
        wait = self.by_address.take(address_key(host))
        if wait:
            raise Throttled(wait, "address")
        wait = self.by_id.take(reviewer_id)
        if wait:
            raise Throttled(wait, "reviewer")


AuditWrite = Callable[..., Awaitable[None]]


class DeniedAudit:
    """Audit rows for refused attempts, at most `per_s` a second (burst the same): the rest
    are counted, and the count goes into the next row written (`suppressed`)."""

    def __init__(
        self, write: AuditWrite, per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._budget = Buckets(max(1.0, per_s), per_s, 1, clock)
        self.suppressed = 0

    async def record(self, action: str, detail: dict[str, Any]) -> None:
        if self._budget.take(""):
            self.suppressed += 1
            return
        if self.suppressed:
            detail = {**detail, "suppressed": self.suppressed}
            self.suppressed = 0
        try:
            await self._write(actor=None, action=action, outcome="denied", detail=detail)
        except AuditFailed:
            # The attempt is refused either way; the refusal needs no audit row to stand.
            log.warning("audit of a refused attempt failed", extra={"action": action})


@dataclass
class Edge:
    """The per-process login throttle and refusal audit the routes share (`app.state.edge`)."""

    throttle: LoginThrottle
    denied: DeniedAudit

    async def admit_login(self, reviewer_id: str, host: str | None) -> None:
        """Raise `Throttled` (audited at the bounded rate) when this login may not be tried."""
        try:
            self.throttle.admit(reviewer_id, host)
        except Throttled as exc:
            review_metrics.shed.add(1, {"reason": "login_throttled"})
            await self.denied.record(
                "login", {"reviewer": reviewer_id, "why": f"throttled by {exc.scope}"}
            )
            raise

    async def refused(self, where: str, why: str) -> None:
        await self.denied.record("request", {"where": where, "why": why})
