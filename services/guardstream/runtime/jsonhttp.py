"""A small JSON-over-HTTP/1.1 server on asyncio's streams, for internal endpoints.

For a process that must answer a few internal routes (the scorer's interactive door) without
carrying a web framework (`tests/unit/test_layout.py` keeps FastAPI out of the scorer). What
it does, and nothing more: one request line, headers, a body of exactly `Content-Length`
bytes (no chunked bodies: 411), at most `max_body_bytes` (413, read no further), keep-alive
unless the client says `Connection: close` (HTTP/1.0: unless it says `keep-alive`), a timeout
for an idle or slow client. What it cannot read is answered with a 4xx and the connection
closed: a request line or header line over `MAX_LINE_BYTES` or with control characters (400,
431), a `Content-Length` that is not plain ASCII digits, is repeated with another value, or
names more bytes than arrive before the client stops sending (400; 408 past the timeout). A
handler
gets the body and the request headers (lower-cased names) and returns a `Reply`; an exception
it lets out is answered 500 and logged without the body. Each routed request is a SERVER span
continuing the caller's W3C `traceparent` (`tracing.server_span`). Not for the open internet:
no TLS, no pipelining guarantees beyond one request at a time per connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import orjson

from guardstream.contracts.errors import PermanentError
from guardstream.runtime import tracing

log = logging.getLogger(__name__)

MAX_HEADER_LINES = 64
MAX_LINE_BYTES = 16 * 1024  # a request or header line; longer: 431 (400 for the request line)
MAX_LENGTH_DIGITS = 18  # a Content-Length past any body limit, still an int without fuss
IDLE_TIMEOUT_S = 30.0
# After refusing a request it did not read whole: how long (and how much) the rest is read and
# dropped before closing, so the client reads the answer instead of a reset connection.
LINGER_S = 2.0
LINGER_BYTES = 8 << 20
# Control characters no request line, header name or value may hold (HTAB is allowed).
_CONTROL = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes  # JSON
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: object, **headers: str) -> Reply:
        return cls(status, orjson.dumps(value), headers)


Handler = Callable[[bytes, Mapping[str, str]], Awaitable[Reply]]


class BadHttpRequest(PermanentError):
    """A request this server cannot read (answered with `status`, the connection closed)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class JsonServer:
    """Routes `(method, path)` → handler, served on `host:port` (port 0: an ephemeral one,
    read back from `port` once started)."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[tuple[str, str], Handler],
        *,
        max_body_bytes: int,
        name: str,
    ) -> None:
        self._host = host
        self.port = port
        self._routes = dict(routes)
        self._max_body = max_body_bytes
        self._name = name
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self.port, limit=MAX_LINE_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s endpoint listening", self._name, extra={"port": self.port})

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        try:
            line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
        except ValueError:  # no line end within MAX_LINE_BYTES (asyncio's LimitOverrunError)
            await _write(writer, Reply.json(400, {"error": "request line too long"}), keep=False)
            await _linger(reader, writer)
            return False
        if not line:
            return False
        try:
            method, path, version, headers = await self._head(line, reader)
            connection = headers.get("connection", "").lower()
            keep = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
            body = await self._body(headers, reader)
        except BadHttpRequest as exc:
            await _write(writer, Reply.json(exc.status, {"error": exc.why}), keep=False)
            await _linger(reader, writer)
            return False
        handler = self._routes.get((method, path.split("?", 1)[0]))
        if handler is None:
            known = any(p == path for _, p in self._routes)
            reply = Reply.json(405 if known else 404, {"error": "no such route"})
        else:
            # A SERVER span continuing the caller's `traceparent`, current while the handler
            # runs: what it publishes (a decision on Kafka) continues the caller's trace.
            with tracing.server_span(f"{method} {path.split('?', 1)[0]}", headers) as span:
                try:
                    reply = await handler(body, headers)
                except asyncio.CancelledError:
                    raise
                # One request's failure answers 500 (logged), never ends the server.
                except Exception:
                    log.exception("%s handler failed", self._name, extra={"path": path})
                    reply = Reply.json(500, {"error": "internal error"})
                tracing.set_status_code(span, reply.status)
        await _write(writer, reply, keep=keep)
        return keep

    async def _head(
        self, line: bytes, reader: asyncio.StreamReader
    ) -> tuple[str, str, str, dict[str, str]]:
        text = line.decode("latin-1").removesuffix("\n").removesuffix("\r")
        parts = text.split(" ")
        if (
            len(parts) != 3
            or not all(parts)
            or parts[2] not in ("HTTP/1.0", "HTTP/1.1")
            or _CONTROL.intersection(text)
        ):
            raise BadHttpRequest(400, "malformed request line")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            try:
                raw = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
            except ValueError:  # no line end within MAX_LINE_BYTES
                raise BadHttpRequest(431, "header line too long") from None
            if raw in (b"\r\n", b"\n"):
                return parts[0], parts[1], parts[2], headers
            if not raw.endswith(b"\n"):
                raise BadHttpRequest(400, "headers end before the blank line")
            field = raw.decode("latin-1").removesuffix("\n").removesuffix("\r")
            name, sep, value = field.partition(":")
            name, value = name.lower(), value.strip(" \t")
            if not sep or not name or name != name.strip() or _CONTROL.intersection(field):
                raise BadHttpRequest(400, "malformed header")
            if name in headers and name in ("content-length", "transfer-encoding", "connection"):
                if headers[name] != value:
                    raise BadHttpRequest(400, f"conflicting {name} headers")
            headers[name] = value
        raise BadHttpRequest(431, "too many headers")

    async def _body(self, headers: Mapping[str, str], reader: asyncio.StreamReader) -> bytes:
        if "transfer-encoding" in headers:
            raise BadHttpRequest(411, "chunked bodies are not accepted: send Content-Length")
        length_text = headers.get("content-length", "0")
        # ASCII digits only (`str.isdigit` also takes `²`), and few enough for `int`.
        if not (length_text.isascii() and length_text.isdigit()):
            raise BadHttpRequest(400, "invalid Content-Length")
        if len(length_text) > MAX_LENGTH_DIGITS or int(length_text) > self._max_body:
            raise BadHttpRequest(413, f"body over {self._max_body} bytes")
        length = int(length_text)
        if length == 0:
            return b""
        try:
            return await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            raise BadHttpRequest(400, "the body ended before Content-Length bytes") from None
        except TimeoutError:
            raise BadHttpRequest(408, "the body did not arrive in time") from None


async def _write(writer: asyncio.StreamWriter, reply: Reply, *, keep: bool) -> None:
    reason = _REASONS.get(reply.status, "Unknown")
    head = [
        f"HTTP/1.1 {reply.status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(reply.body)}",
        f"Connection: {'keep-alive' if keep else 'close'}",
        *(f"{name}: {value}" for name, value in reply.headers.items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
    await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Refused mid-request: stop writing, then read and drop what the client still sends (up
    to `LINGER_BYTES`, for `LINGER_S`), so that closing does not reset the connection under
    the answer before the client has read it."""
    if writer.can_write_eof():
        writer.write_eof()
    left = LINGER_BYTES
    try:
        async with asyncio.timeout(LINGER_S):
            while left > 0 and (chunk := await reader.read(min(left, 64 * 1024))):
                left -= len(chunk)
    except (TimeoutError, ConnectionError):
        pass
