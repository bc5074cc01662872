"""A small HTTP/1.1 load generator on raw asyncio streams (uvloop when installed), run as its
own process so that the server under test and the client do not share an event loop.

Keep-alive connections, `Content-Length` bodies only (what uvicorn answers), no TLS. Two modes:

- closed loop (`--concurrency C`): C connections, each sends its next request as soon as the
  previous answer is read; throughput is what the server (and this client) can do at C.
- open loop (`--rate R`): request i is due at start + i/R whatever the answers do; a free
  connection takes it (a new one is opened when none is free, up to `--concurrency`). Its
  latency is counted from when it was due, not from when it was sent, so a stalled server is
  not hidden by a client that waited for it (coordinated omission).

Bodies come from `--bodies FILE` (one JSON body a line). `--once` sends each body exactly once
(distinct posts: cache misses); otherwise they are sent round-robin. Requests answered in
`--warmup` seconds are not counted. The only output is one JSON line on stdout (or in `--out
FILE`): counts per status, throughput and latency percentiles of the 2xx answers (and, with
`--raw`, every such latency, for the caller to pool runs).

    python bench/loadgen.py --url http://127.0.0.1:8080/v1/moderate --bodies posts.jsonl
        [--concurrency 8] [--duration 10] [--rate 500] [--once] [--warmup 1]
        [--header 'Authorization: Bearer KEY'] [--raw]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def requests_for(url: str, bodies: Sequence[bytes], headers: Sequence[str]) -> list[bytes]:
    """Each body as a whole HTTP/1.1 POST, bytes ready to write."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\n" + "".join(f"{h}\r\n" for h in headers)
    ).encode()
    return [head + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request, read its whole answer; its status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"transfer-encoding":
            raise RuntimeError("chunked answers are not supported")
    if length:
        await reader.readexactly(length)
    return status


@dataclass
class Tally:
    counted_from: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first: float = math.inf
    last: float = 0.0
    connections: int = 0

    def add(self, began: float, ended: float, status: int) -> None:
        if began < self.counted_from:
            return
        self.statuses[status] += 1
        self.first = min(self.first, began)
        self.last = max(self.last, ended)
        if 200 <= status < 300:
            self.latencies_ms.append((ended - began) * 1000)

    def summary(self, raw: bool) -> dict[str, object]:
        done = sum(self.statuses.values())
        span = self.last - self.first if done else 0.0
        ok = self.latencies_ms
        out: dict[str, object] = {
            "requests": done,
            "ok": len(ok),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "connections": self.connections,
            "seconds": round(span, 3),
            "rps": round(len(ok) / span, 1) if span > 0 else 0.0,
            "p50_ms": round(percentile(ok, 50), 3),
            "p90_ms": round(percentile(ok, 90), 3),
            "p99_ms": round(percentile(ok, 99), 3),
            "max_ms": round(max(ok), 3) if ok else float("nan"),
        }
        if raw:
            out["latencies_ms"] = [round(v, 3) for v in ok]
        return out


async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    return reader, writer


async def closed_loop(
    host: str, port: int, requests: list[bytes], args: argparse.Namespace, tally: Tally
) -> None:
    stop_at = time.perf_counter() + args.warmup + args.duration
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        tally.connections += 1
        reader, writer = await connect(host, port)
        try:
            while time.perf_counter() < stop_at:
                if args.once and next_index >= len(requests):
                    return
                request = requests[next_index % len(requests)]
                next_index += 1
                began = time.perf_counter()
                try:
                    status = await exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    tally.errors[type(exc).__name__] += 1
                    writer.close()
                    tally.connections += 1
                    reader, writer = await connect(host, port)
                    continue
                tally.add(began, time.perf_counter(), status)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))


async def open_loop(
    host: str, port: int, requests: list[bytes], args: argparse.Namespace, tally: Tally
) -> None:
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened = 0
    running: set[asyncio.Task[None]] = set()

    async def one(due: float, request: bytes) -> None:
        nonlocal opened
        if idle:
            conn = idle.pop()
        else:
            opened += 1
            conn = await connect(host, port)
        try:
            status = await exchange(*conn, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.errors[type(exc).__name__] += 1
            conn[1].close()
            return
        tally.add(due, time.perf_counter(), status)
        idle.append(conn)

    start = time.perf_counter()
    total = int(args.rate * (args.warmup + args.duration))
    if args.once:
        total = min(total, len(requests))
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(running) >= args.concurrency:  # the client's own cap: counted, never queued
            tally.errors["client_cap"] += 1
            continue
        task = asyncio.create_task(one(due, requests[i % len(requests)]))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)
    for _, writer in idle:
        writer.close()
    tally.connections = opened


async def run(args: argparse.Namespace, requests: list[bytes]) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally = Tally(counted_from=time.perf_counter() + args.warmup)
    if args.rate:
        await open_loop(host, port, requests, args, tally)
    else:
        await closed_loop(host, port, requests, args, tally)
    summary = tally.summary(args.raw)
    summary.update(concurrency=args.concurrency, rate=args.rate)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="one JSON body a line")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds counted")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds not counted first")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many req/s")
    parser.add_argument("--once", action="store_true", help="each body once (distinct posts)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--raw", action="store_true", help="also every 2xx latency")
    parser.add_argument("--out", type=Path, help="write the JSON line here, not to stdout")
    args = parser.parse_args(argv)
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    if not bodies:
        parser.error("--bodies: no bodies")
    requests = requests_for(args.url, bodies, args.header)
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # optional: the loop uvicorn picks too when it is installed

        runner = uvloop.run
    line = json.dumps(runner(run(args, requests)))
    if args.out is not None:  # a file: the event loop may leave stdout non-blocking
        args.out.write_text(line + "\n")
    else:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
