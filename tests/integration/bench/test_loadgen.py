"""bench/loadgen.py, the API bench's load generator, against a small asyncio HTTP server on
loopback: it counts what the server answered (statuses, bodies sent once with `--once`), reads
keep-alive answers of any length, and in open loop keeps to its schedule while the server
stalls: a request due when every connection is busy is counted as refused by the client's cap,
never queued to be sent late (where its wait would vanish from the figures)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOADGEN = Path(__file__).parents[3] / "bench" / "loadgen.py"


def _load():  # bench/ holds scripts, not a package
    spec = importlib.util.spec_from_file_location("bench_loadgen", LOADGEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


loadgen = _load()


class Server:
    """Answers each POST with its body's length of bytes, 503 for a body `b"busy"`; while
    `stalled` is clear, every answer waits."""

    def __init__(self) -> None:
        self.received: Counter[bytes] = Counter()
        self.stalled = asyncio.Event()
        self.stalled.set()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                self.received[body] += 1
                await self.stalled.wait()
                status = b"503 Service Unavailable" if body == b'"busy"' else b"200 OK"
                answer = b"x" * (len(body) * 100)
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(answer) + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1/moderate"
    finally:
        listening.close()


def options(**given: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "concurrency": 4,
        "duration": 1.0,
        "warmup": 0.0,
        "rate": 0.0,
        "once": False,
        "raw": True,
        "header": [],
    }
    return argparse.Namespace(**{**base, **given})


async def test_once_sends_each_body_exactly_once_and_counts_each_status() -> None:
    bodies = [b'"post-%d"' % i for i in range(40)] + [b'"busy"']
    async with serving() as (server, url):
        args = options(url=url, once=True, concurrency=3, duration=30.0)
        found = await loadgen.run(args, loadgen.requests_for(url, bodies, ["X-Key: k"]))
    assert server.received == Counter(bodies)
    assert found["statuses"] == {"200": 40, "503": 1}
    assert found["ok"] == 40 and len(found["latencies_ms"]) == 40
    assert found["connections"] == server.connections == 3
    assert found["p50_ms"] <= found["p99_ms"] <= found["max_ms"]


async def test_closed_loop_sends_round_robin_until_the_duration_ends() -> None:
    bodies = [b'"a"', b'"bb"']
    async with serving() as (server, url):
        args = options(url=url, duration=0.5, concurrency=2)
        found = await loadgen.run(args, loadgen.requests_for(url, bodies, []))
    assert found["ok"] == sum(server.received.values()) > 10
    assert abs(server.received[b'"a"'] - server.received[b'"bb"']) <= 2
    assert 0.4 <= found["seconds"] <= 1.0
    assert found["rps"] == pytest.approx(found["ok"] / found["seconds"], rel=0.01)


async def test_open_loop_keeps_its_schedule_through_a_stall() -> None:
    async with serving() as (server, url):
        args = options(url=url, rate=100.0, duration=1.0, concurrency=2)

        async def stall() -> None:
            await asyncio.sleep(0.3)
            server.stalled.clear()
            await asyncio.sleep(0.4)
            server.stalled.set()

        staller = asyncio.create_task(stall())
        found = await loadgen.run(args, loadgen.requests_for(url, [b'"p"'], []))
        await staller
    # Two connections were busy through the stall: the requests due meanwhile were refused
    # by the client's own cap (never queued), and those in flight waited ~0.4 s.
    assert found["errors"].get("client_cap", 0) > 0
    assert found["max_ms"] >= 350
    assert found["ok"] + found["errors"]["client_cap"] == 100


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile([3.0], 99) == 3.0
