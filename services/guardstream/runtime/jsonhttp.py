"""A small JSON-over-HTTP/1.1 server on asyncio's streams, for internal endpoints.

For a process that must answer a few internal routes (the scorer's interactive door) without
carrying a web framework (`tests/unit/test_layout.py` keeps FastAPI out of the scorer). What
it does, and nothing more: one request line, headers, a body of exactly `Content-Length`
bytes (no chunked bodies: 411), at most `max_body_bytes` (413, read no further), keep-alive
unless the client says `Connection: close`, a timeout for an idle or slow client. A handler
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
IDLE_TIMEOUT_S = 30.0
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
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
        self._server = await asyncio.start_server(self._serve, self._host, self.port)
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
        line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
        if not line:
            return False
        try:
            method, path, headers = await self._head(line, reader)
            keep = headers.get("connection", "").lower() != "close"
            body = await self._body(headers, reader)
        except BadHttpRequest as exc:
            await _write(writer, Reply.json(exc.status, {"error": exc.why}), keep=False)
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
    ) -> tuple[str, str, dict[str, str]]:
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadHttpRequest(400, "malformed request line")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            raw = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
            if raw in (b"\r\n", b"\n", b""):
                return parts[0], parts[1], headers
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise BadHttpRequest(400, "malformed header")
            headers[name.strip().lower()] = value.strip()
        raise BadHttpRequest(431, "too many headers")

    async def _body(self, headers: Mapping[str, str], reader: asyncio.StreamReader) -> bytes:
        if "transfer-encoding" in headers:
            raise BadHttpRequest(411, "chunked bodies are not accepted: send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise BadHttpRequest(400, "invalid Content-Length")
        length = int(length_text)
        if length > self._max_body:
            raise BadHttpRequest(413, f"body over {self._max_body} bytes")
        if length == 0:
            return b""
        return await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT_S)


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
