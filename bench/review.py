"""Review console latency: the queue page and claims with a deep backlog and many reviewers.

One run on one machine (loopback), against the real PostgreSQL (`DATABASE_URL`, default
postgres@127.0.0.1:5432/postgres) in a schema of its own (dropped afterwards), the real Redis,
and a Kafka-protocol broker (a memory-only tansu started here unless `KAFKA_BOOTSTRAP` is set):

1. Backlog: `--pending` open tasks (default 100,000) of one tenant, deadlines spread over the
   next two hours, written with COPY; the reviewers (`--reviewers`, default 50) are created
   with tokens. Everybody sees the same 100k-task tenant: the worst case for the queue query.
2. The real process: `python -m guardstream review` (uvicorn, the consumer, the relay, the
   round-robin timer), started with its own namespace and schema; timed once `/readyz` is 200.
3. Reviewers: `--reviewers` asyncio clients in this process (httpx, one connection each). Each
   repeats: GET `/api/v1/queue?limit=50` (the queue page: 50 tasks by deadline + depth and
   average response time), POST `/api/v1/tasks/claim`, then POST the decision (confirm + one
   tag), pausing `--think-s` (default 1 s, jittered ±50%) between actions as a person does.
   Each request is timed from send to full response; the first `--warmup-s` are dropped.
   Then a saturation run: the same loop with no pause, to show where the single process
   tops out on this machine (reported beside, not as the target).
4. Abuse (issue 17): right after the paced run, the same paced reviewers for `--abuse-s`
   while `--abusers` (default 200) unauthenticated clients in a child process hammer the API
   without pause: half send junk logins (random ids and passwords), half POST
   `--abuse-body-mb` (default 10) MB bodies, declared and chunked in turn. Reported: the
   reviewer-facing p99 (queue + claim together) without and with the abuse, their ratio
   (`abuse_p99_ratio`, target <= 3) and every 5xx anyone got meanwhile (`abuse_5xx`, target 0),
   beside what the abusers were answered.

Latencies include the audit row written (and committed) for every read, and for a decision
the outbox relay publishing its Review, Decision and assignment events to the broker before
the response. Everything shares this machine's cores (2 here): the server, PostgreSQL, the
broker and the 50 clients. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from urllib.error import URLError

import asyncpg
import httpx

from guardstream.contracts.events import utcnow
from guardstream.review import auth
from guardstream.review.logic import task_id
from guardstream.review.store import ReviewStore
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings

TENANT = "acme"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def seed(settings: Settings, pending: int, reviewers: int) -> dict[str, str]:
    store = await ReviewStore.open(settings)
    now = utcnow()
    rng = random.Random(7)
    try:
        async with store.transaction() as tx:
            # One password hash for all (scrypt is slow on purpose); tokens differ.
            digest = auth.hash_password("bench-password")
            await tx.conn.executemany(
                "INSERT INTO reviewers (id, tenants, role, on_call, password_hash)"
                " VALUES ($1, $2, 'reviewer', false, $3)",
                [(f"r{i:03d}", [TENANT], digest) for i in range(reviewers)],
            )
            tokens = {f"r{i:03d}": auth.new_token() for i in range(reviewers)}
            await tx.conn.executemany(
                "INSERT INTO api_tokens (token_hash, reviewer_id, expires_at) VALUES ($1, $2, $3)",
                [(auth.token_hash(t), r, now + timedelta(hours=2)) for r, t in tokens.items()],
            )
            rows = []
            for i in range(pending):
                post = f"bench-{i}"
                created = now - timedelta(seconds=rng.uniform(0, 600))
                deadline = now + timedelta(seconds=rng.uniform(60, 7200))
                rows.append(
                    (
                        task_id(TENANT, post, "default@1"),
                        post,
                        "default@1",
                        TENANT,
                        rng.choice(("zh", "en")),
                        None,
                        uuid.uuid4().hex,
                        uuid.uuid4().hex,
                        secrets.token_hex(16),
                        "controversial",
                        ["Politically Sensitive Topics"],
                        rng.uniform(0.4, 0.9),
                        "Qwen3Guard: Controversial",
                        "tiny",
                        None,
                        [],
                        created,
                        deadline,
                        deadline - timedelta(seconds=1800),
                        created + timedelta(seconds=900),
                    )
                )
            await tx.conn.copy_records_to_table(
                "tasks",
                records=rows,
                columns=[
                    "task_id",
                    "post_id",
                    "policy",
                    "tenant",
                    "lang",
                    "region",
                    "decision_id",
                    "post_event_id",
                    "content_key",
                    "model_verdict",
                    "categories",
                    "confidence",
                    "reason",
                    "model",
                    "adapter",
                    "domain_tags",
                    "created_at",
                    "deadline",
                    "warn_at",
                    "assign_by",
                ],
            )
        async with store.transaction() as tx:
            await tx.conn.execute("ANALYZE tasks")
    finally:
        await store.close()
    return tokens


async def reviewer_loop(
    base: str,
    token: str,
    stop_at: float,
    warm_until: float,
    think_s: float,
    timings: dict[str, list[float]],
    rng: random.Random,
    server_errors: Counter[str],
) -> None:
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        limits=httpx.Limits(max_connections=1),
    ) as http:

        async def timed(name: str, method: str, url: str, **kw: object) -> httpx.Response:
            start = time.perf_counter()
            response = await http.request(method, url, **kw)  # type: ignore[arg-type]
            took = (time.perf_counter() - start) * 1000
            if response.status_code >= 500:
                server_errors[f"{name} {response.status_code}"] += 1
            else:
                response.raise_for_status()
            if time.monotonic() >= warm_until:
                timings[name].append(took)
            return response

        async def pause() -> None:
            if think_s > 0:
                await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))

        await asyncio.sleep(rng.uniform(0, think_s or 0.01))  # reviewers do not start in step
        while time.monotonic() < stop_at:
            await timed("queue", "GET", "/api/v1/queue", params={"limit": 50})
            await pause()
            claimed = await timed("claim", "POST", "/api/v1/tasks/claim")
            task = claimed.json() if claimed.status_code == 200 else None
            await pause()
            if task:
                await timed(
                    "decide",
                    "POST",
                    f"/api/v1/tasks/{task['task_id']}/decision",
                    json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
                )
                await pause()


async def load(
    base: str,
    tokens: dict[str, str],
    seconds: float,
    warmup_s: float,
    think_s: float,
    server_errors: Counter[str] | None = None,
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"queue": [], "claim": [], "decide": []}
    errors: Counter[str] = Counter() if server_errors is None else server_errors
    now = time.monotonic()
    rng = random.Random(11)
    await asyncio.gather(
        *(
            reviewer_loop(
                base,
                token,
                now + seconds,
                now + warmup_s,
                think_s,
                timings,
                random.Random(rng.random()),
                errors,
            )
            for token in tokens.values()
        )
    )
    return timings


async def abuser(base: str, n: int, stop_at: float, body: bytes, answered: Counter[str]) -> None:
    """One unauthenticated client without pause: junk logins (even n) or `body` (odd n),
    declared and chunked in turn."""
    rng = random.Random(n)
    view = memoryview(body)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(view), 65536):
            yield bytes(view[start : start + 65536])

    async with httpx.AsyncClient(
        base_url=base, timeout=30, limits=httpx.Limits(max_connections=1)
    ) as http:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            try:
                if n % 2 == 0:
                    junk = {
                        "reviewer": f"r{rng.randrange(10**6)}",
                        "password": secrets.token_hex(8),
                    }
                    response = await http.post("/api/v1/auth/token", json=junk)
                else:
                    response = await http.post(
                        "/api/v1/auth/token",
                        content=body if i % 2 else chunked(),
                        headers={"Content-Type": "application/json"},
                    )
                answered[str(response.status_code)] += 1
            except httpx.TransportError as exc:
                # The server closes after a 413 without reading the rest of the body.
                answered[type(exc).__name__] += 1


async def abuse_only(base: str, clients: int, seconds: float, body_mb: int) -> dict[str, int]:
    answered: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    body = b"x" * (body_mb * 1024 * 1024)  # one copy, shared by every client
    await asyncio.gather(*(abuser(base, n, stop_at, body, answered) for n in range(clients)))
    return dict(answered)


async def abused_load(
    base: str, tokens: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, int], Counter[str]]:
    """The paced reviewers while the abusers run in a child process (their own event loop and
    core share, as an attacker's would be)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--abuse-only",
        base,
        "--abusers",
        str(args.abusers),
        "--abuse-s",
        str(args.abuse_s + 2),
        "--abuse-body-mb",
        str(args.abuse_body_mb),
        stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2)  # the abusers are at full speed before the reviewers are timed
    server_errors: Counter[str] = Counter()
    timings = await load(base, tokens, args.abuse_s, args.warmup_s, args.think_s, server_errors)
    out, _ = await child.communicate()
    answered: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return timings, answered, server_errors


def reviewer_p99(timings: dict[str, list[float]]) -> float:
    """The reviewer-facing p99: the queue page and claims together."""
    return round(pct(timings["queue"] + timings["claim"], 99), 2)


def summary(timings: dict[str, list[float]], seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in timings.items():
        out[f"{name}_p50_ms"] = round(pct(values, 50), 2)
        out[f"{name}_p99_ms"] = round(pct(values, 99), 2)
        out[f"{name}_n"] = len(values)
    total = sum(len(v) for v in timings.values())
    out["requests_per_s"] = round(total / max(seconds, 1e-9), 1)
    return out


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"review process exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"review process not ready: {log.read_text()[-3000:]}")


async def run(args: argparse.Namespace) -> dict[str, object]:
    from guardstream.devtools.stack import tansu_command

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    schema = f"bench_review_{uuid.uuid4().hex[:8]}"
    database = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    workdir = Path(tempfile.mkdtemp(prefix="bench-review-"))
    broker: subprocess.Popen[bytes] | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        kport = free_port()
        broker = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
            tansu_command(kport),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bootstrap = f"127.0.0.1:{kport}"
        await asyncio.sleep(0.5)
    port = free_port()
    settings = Settings(
        namespace=namespace,
        kafka={"bootstrap": bootstrap},
        database={"url": database, "review_schema": schema},
        review={"port": port},
    )
    proc: subprocess.Popen[bytes] | None = None
    try:
        await ensure_topics(settings)
        started = time.perf_counter()
        tokens = await seed(settings, args.pending, args.reviewers)
        print(f"seeded {args.pending} pending tasks in {time.perf_counter() - started:.1f}s")
        env = {
            **os.environ,
            "GUARDSTREAM_NAMESPACE": namespace,
            "KAFKA_BOOTSTRAP": bootstrap,
            "DATABASE_URL": database,
            "GUARDSTREAM_REVIEW_DB_SCHEMA": schema,
            "GUARDSTREAM_REVIEW_PORT": str(port),
            "GUARDSTREAM_REVIEW_DB_POOL_MAX": str(args.pool),
            "GUARDSTREAM_LOG_LEVEL": "WARNING",
        }
        log = workdir / "review.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "guardstream", "review"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await asyncio.to_thread(wait_ready, port, proc, log)
        base = f"http://127.0.0.1:{port}"

        human = await load(base, tokens, args.seconds, args.warmup_s, args.think_s)
        paced = summary(human, args.seconds - args.warmup_s)
        print(f"paced ({args.reviewers} reviewers, think {args.think_s}s):", paced)
        abused, answered, server_errors = await abused_load(base, tokens, args)
        under_abuse = summary(abused, args.abuse_s - args.warmup_s)
        abuse_5xx = sum(server_errors.values()) + sum(
            n for status, n in answered.items() if status.isdigit() and int(status) >= 500
        )
        print(f"paced under abuse ({args.abusers} clients):", under_abuse)
        print("abusers were answered:", answered, "reviewer 5xx:", dict(server_errors))
        saturated: dict[str, float] = {}
        if args.saturate_s > 0:
            flat = await load(base, tokens, args.saturate_s, 1.0, 0.0)
            saturated = summary(flat, args.saturate_s - 1.0)
            print(f"saturated ({args.reviewers} reviewers, no pause):", saturated)
        async with httpx.AsyncClient(base_url=base) as http:
            first = next(iter(tokens.values()))
            stats = (
                await http.get("/api/v1/stats", headers={"Authorization": f"Bearer {first}"})
            ).json()
        return {
            "pending": args.pending,
            "reviewers": args.reviewers,
            "think_s": args.think_s,
            "queue_p50_ms": paced["queue_p50_ms"],
            "queue_p99_ms": paced["queue_p99_ms"],
            "claim_p50_ms": paced["claim_p50_ms"],
            "claim_p99_ms": paced["claim_p99_ms"],
            "decide_p50_ms": paced["decide_p50_ms"],
            "decide_p99_ms": paced["decide_p99_ms"],
            "requests_per_s": paced["requests_per_s"],
            "abusers": args.abusers,
            "abuse_body_mb": args.abuse_body_mb,
            "reviewer_p99_ms": reviewer_p99(human),
            "abuse_reviewer_p99_ms": reviewer_p99(abused),
            "abuse_p99_ratio": round(reviewer_p99(abused) / reviewer_p99(human), 2),
            "abuse_5xx": abuse_5xx,
            "abuse_queue_p99_ms": under_abuse["queue_p99_ms"],
            "abuse_claim_p99_ms": under_abuse["claim_p99_ms"],
            "abuse_reviewer_requests": under_abuse["queue_n"] + under_abuse["claim_n"],
            "abuse_answers": answered,
            # How hard the abusers pushed (answers and resets a second): bounded by the cores
            # they share with everything else here.
            "abuse_answers_per_s": round(sum(answered.values()) / (args.abuse_s + 2), 1),
            "saturated_queue_p99_ms": saturated.get("queue_p99_ms"),
            "saturated_claim_p99_ms": saturated.get("claim_p99_ms"),
            "saturated_requests_per_s": saturated.get("requests_per_s"),
            "queue_depth_after": stats["queue_depth"],
            "target_queue_p99_ms": 50,
            "target_abuse_p99_ratio": 3,
            "cpus": os.cpu_count(),
            # Other work on this machine during the run (1-minute load average, end of run).
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=30)
        conn = await asyncpg.connect(database)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--reviewers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=40.0, help="paced run length")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between actions")
    parser.add_argument("--saturate-s", type=float, default=15.0, help="0 skips it")
    parser.add_argument("--pool", type=int, default=20, help="server's PostgreSQL pool size")
    parser.add_argument("--abusers", type=int, default=200, help="unauthenticated clients")
    parser.add_argument("--abuse-s", type=float, default=30.0, help="paced run under abuse")
    parser.add_argument("--abuse-body-mb", type=int, default=10)
    parser.add_argument("--abuse-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.abuse_only:
        # The abusers' child process: its answers as one JSON line.
        answered = asyncio.run(
            abuse_only(args.abuse_only, args.abusers, args.abuse_s, args.abuse_body_mb)
        )
        print(json.dumps(answered))
        return 0
    result = asyncio.run(run(args))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
