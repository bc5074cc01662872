"""Liveness and readiness over HTTP (`/healthz`, `/readyz`) for orchestrators and `make up`;
optionally a process's own JSON numbers on `/status` (no post ids, no text).

Deliberately dependency-free: a process that cannot even answer this is dead. Readiness and
liveness are callables so each process decides what they mean (ready: engine loaded,
partitions assigned; live: e.g. the scorer's model engine has not died).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(
        self,
        port: int,
        ready: Callable[[], bool],
        name: str,
        status: Callable[[], dict[str, Any]] | None = None,
        gauges: Callable[[], dict[str, int]] | None = None,
        live: Callable[[], bool] = lambda: True,
        host: str = "127.0.0.1",
    ) -> None:
        self._port = port
        self._host = host
        self._ready = ready
        self._live = live
        self._name = name
        self._status = status
        self._gauges = gauges  # numbers `/healthz` reports beside liveness (no payloads)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self._port:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
            log.info("health endpoint listening", extra={"host": self._host, "port": self._port})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/healthz":
                live = self._live()
                gauges = self._gauges() if self._gauges is not None else {}
                status, body = (
                    (200 if live else 503),
                    {"process": self._name, "live": live, **gauges},
                )
            elif path == "/readyz":
                ready = self._ready()
                status, body = (200 if ready else 503), {"process": self._name, "ready": ready}
            elif path == "/status" and self._status is not None:
                status, body = 200, {"process": self._name, **self._status()}
            else:
                status, body = 404, {"error": "not found"}
            payload = orjson.dumps(body)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
