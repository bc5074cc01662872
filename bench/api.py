"""The moderation API's speed against a bare FastAPI endpoint and against the scorer it calls.

One run on one machine, one load generator (`bench/loadgen.py`: raw asyncio HTTP/1.1 with
keep-alive, on uvloop, in its own process for each measurement), three servers:

(a) bare: a FastAPI app whose one route answers a constant JSON, served by uvicorn configured
    as `guardstream api` serves (`log_config=None`, `access_log=False`, `lifespan="off"`,
    uvicorn's default HTTP parser, `Server.serve()` on uvloop (`api.main.event_loop`), as
    the API's), in its own process. The ceiling of the stack.
(b) hits: `POST /v1/moderate` on the real API process (`python -m guardstream api`, real
    Redis, a memory-only tansu broker started here unless `KAFKA_BOOTSTRAP` is set). The
    cache is warmed first: `--warm-posts` distinct posts are moderated once (misses, scored),
    then the load sends those same texts again (new post events, so each is a verdict-cache
    hit, decided and published by the API itself, journal included). The API's own counters
    (`/status`) say how many of the counted requests were hits.
(c) misses: distinct posts, never seen, through the API to the scorer's interactive door
    (`python -m guardstream scorer`, the tiny Qwen3 checkpoint on vLLM CPU), and, for the
    same kind of posts (fresh ones: a scored post would be a cache hit), the scorer's door
    `POST /v1/score` called directly with the score request the API would send. At each
    concurrency the two are run in alternating halves, so drift in the machine's load falls
    on both.

Closed loop at each `--concurrency` level (bare and hits interleaved level by level), then
open loop (requests due at a fixed rate, latency counted from when each was due) on hits at
half the largest hit throughput seen: `hit_p99_ms`. The miss figures are those at the largest
`--miss-concurrency` level. Beside them: the API process's CPU per hit and per miss
(`api_cpu_us_per_hit`, `api_cpu_us_per_miss`: psutil over the runs less the process's idle
CPU over as long, measured first, divided by the requests its own counters saw; `_gross`:
without that subtraction; the capacity planner's unit costs for API replicas), and, for scale,
the broker's acknowledgement of one record at a time with the producer the API publishes
with (`broker_ack_*`: a hit is published, acks=all, before it is answered).

Targets (printed, never asserted): hits ≥ 0.5 × bare throughput; hit p99 ≤ 10 ms at half the
maximum hit throughput; miss p99 − scorer p99 ≤ 20 ms.

Everything shares this machine's cores: the client, the server under test, and for hits and
misses the broker, Redis and the scorer. `load_1m_*` in the JSON is the machine's load
average at the start and end of the run; compare only runs made on the same machine.

    .venv/bin/python bench/api.py [--quick] [--concurrency 1,8,32,64] [--miss-concurrency 1,4]
        [--duration 6] [--warm-posts 200] [--miss-posts 80] [--results FILE] [--keep-logs]
        [--profile api.prof] [--hits-only] [--api-code DIR]

`--hits-only`: no scorer; the cache is filled directly (a confident model verdict per post)
and only the bare endpoint and hits are measured. `--api-code DIR`: the API runs from another
source tree (`PYTHONPATH=DIR`), for a before/after on one machine. `--profile`: cProfile on the
API process's CPU clock. Beside the API's CPU per request: the bare server's
(`bare_cpu_us_per_request`, approximate: its warm-up's requests counted at the measured rate)
and their ratio (`cpu_bound_hit_ratio`: the hit/bare throughput one core each would allow).

API keys: `--api-key KEY` (or `GUARDSTREAM_BENCH_API_KEY`) sends `Authorization: Bearer KEY`
with every request (the bare endpoint's too, so both parse the same headers) and leaves the
API's key check as configured; the key must be valid for `--namespace`. Without a key the API
is started with `GUARDSTREAM_API_AUTH=off` (where the API has that setting). Progress goes to
stderr; the table to stdout and, last, one JSON line. Cleans up on exit: processes stopped,
`gs:<namespace>:*` deleted (when the namespace is the bench's own). Reads no env file (`.env`
of `make up`) unless `GUARDSTREAM_ENV_FILE` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import URLError

import orjson
import psutil  # type: ignore[import-untyped]
import redis
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastapi import FastAPI
from fastapi.responses import Response

from guardstream.api.main import event_loop
from guardstream.contracts.events import Source, Verdict, utcnow
from guardstream.devtools.produce import new_post
from guardstream.devtools.stack import tansu_command
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.runtime.kafka import (
    INTERACTIVE_LINGER_MS,
    client_kwargs,
    ensure_topics,
    make_producer,
)
from guardstream.runtime.settings import Settings, every_setting
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache
from guardstream.verdict.intake import score_request_json, triage_record

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
ROUTE = "/v1/moderate"
SCORE_ROUTE = "/v1/score"
CONSTANT = orjson.dumps({"verdict": "safe", "action": "allow", "source": "bare"})
TARGET_HIT_RATIO = 0.5
TARGET_HIT_P99_MS = 10.0
TARGET_MISS_OVER_SCORER_MS = 20.0
AUTH_SETTING = "GUARDSTREAM_API_AUTH"  # keys|off, once the API checks keys
MAX_MODEL_LEN = 2048  # the tiny checkpoint's window in the tests
Say = Callable[[str], None]

# --- posts ----------------------------------------------------------------------------------

EN = (
    "the my your this every some people friends team city school work game movie music phone "
    "laptop car train coffee dinner weekend morning night today tomorrow really honestly love "
    "hate want need think know feel watch read write buy sell send call help find lose win "
    "play make take give tell ask good bad great terrible amazing boring funny cheap new old "
    "fast slow happy sad angry tired worried price deal offer link account order delivery "
    "refund review update news election vote police doctor hospital weather rain beach park "
    "store market street house office teacher student boss neighbour sister brother dog cat "
    "garden river bridge mountain library museum kitchen bakery recipe holiday flight hotel"
).split()
ZH = (
    "我们 你们 今天 明天 周末 晚上 朋友 家人 孩子 老师 学生 城市 学校 公司 工作 游戏 电影 音乐 "
    "手机 电脑 地铁 咖啡 火锅 真的 非常 已经 可能 感觉 喜欢 需要 看到 购买 帮忙 便宜 新的 开心 "
    "价格 优惠 订单 快递 退款 评价 新闻 天气 公园 商场 市场 房子 图书馆 博物馆 厨房 假期 航班"
).split()


def post_texts(rng: random.Random, count: int) -> list[str]:
    """`count` distinct posts, English (about 60%) and Chinese, 8-40 words: random words from
    a small vocabulary, so no two are near-duplicates of each other."""
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < count:
        if rng.random() < 0.6:
            words = rng.choices(EN, k=rng.randint(8, 40))
            text = " ".join(words).capitalize() + rng.choice(".!?")
        else:
            text = "".join(rng.choices(ZH, k=rng.randint(6, 25))) + rng.choice("。！？")
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def moderate_body(text: str) -> bytes:
    """A `/v1/moderate` request without post or event id: a new post event each time."""
    return orjson.dumps({"text": text})


def score_body(settings: Settings, text: str) -> bytes:
    """The score request the API sends the scorer's door for `text` (`api.moderator`)."""
    item = triage_record(
        new_post(text).to_json(),
        max_text_chars=settings.process.max_text_chars,
        model=served_model_id(settings),
        adapter=None,
        policies=load_registry(None),
    )
    return score_request_json(item, near_duplicates=settings.policy.near_duplicates)


async def fill_cache(settings: Settings, texts: Sequence[str]) -> int:
    """`--hits-only`: a model verdict (safe) in the verdict cache for each text, under the key
    the API's triage gives a `/v1/moderate` request of that text (the default tenant)."""
    cache = RedisVerdictCache.from_settings(settings)
    registry = load_registry(None)
    model = served_model_id(settings)
    entries = {}
    for text in texts:
        item = triage_record(
            new_post(text).to_json(),
            max_text_chars=settings.process.max_text_chars,
            model=model,
            adapter=None,
            policies=registry,
        )
        entries[item.verdict_key] = CachedVerdict(
            verdict=Verdict.SAFE,
            confidence=0.99,  # confident: allowed, as most traffic is (no review, no watch)
            reason="bench: filled directly",
            source=Source.MODEL,
            model=model,
            decided_at=utcnow(),
        )
    try:
        await cache.put_many(entries)
    finally:
        await cache.close()
    return len(entries)


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) the process `pid` has used so far; 0 without one."""
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def cpu_profiled(out: Path) -> str:
    """`python -c` code running `guardstream api` under cProfile on the process's CPU clock
    (`time.process_time`): time spent descheduled on a busy machine is not counted."""
    return (
        "import cProfile, runpy, sys, time\n"
        "sys.argv = ['guardstream', 'api']\n"
        "profile = cProfile.Profile(time.process_time)\n"
        "try:\n"
        "    profile.runcall(runpy.run_module, 'guardstream', run_name='__main__')\n"
        "finally:\n"
        f"    profile.dump_stats({str(out)!r})\n"
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, as `bench/loadgen.py` computes it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- the bare endpoint ----------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """(a): one route, a constant JSON, uvicorn configured as `api.main` configures it."""
    app = FastAPI()

    @app.post(ROUTE)
    async def moderate() -> Response:
        return Response(CONSTANT, 200, media_type="application/json")

    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
        )
    )
    # As `guardstream api` runs it: `serve()` on the API's own event loop (uvloop).
    with asyncio.Runner(loop_factory=event_loop) as runner:
        runner.run(server.serve())


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return dict(orjson.loads(answer.read()))
    except (URLError, OSError, ValueError):
        return None


@dataclass
class Child:
    """A process of the run, in its own session (its children are stopped with it)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_for(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):  # what it left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def ready_at(port: int) -> Callable[[], bool]:
    return lambda: (get_json(f"http://127.0.0.1:{port}/readyz") or {}).get("ready") is True


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Run:
    """One load generator run's summary (`bench/loadgen.py`'s JSON line)."""

    label: str
    concurrency: int
    figures: dict[str, Any]

    @property
    def rps(self) -> float:
        return float(self.figures["rps"])

    def ms(self, q: str) -> float:
        return float(self.figures[f"{q}_ms"])


@dataclass
class Loader:
    workdir: Path
    headers: list[str]
    say: Say
    runs: list[Run] = field(default_factory=list)
    _files: int = 0

    def bodies(self, bodies: Sequence[bytes]) -> Path:
        self._files += 1
        path = self.workdir / f"bodies-{self._files}.jsonl"
        path.write_bytes(b"\n".join(bodies) + b"\n")
        return path

    def load(
        self,
        label: str,
        url: str,
        bodies: Path,
        *,
        concurrency: int,
        duration: float = 3600.0,
        warmup: float = 0.0,
        rate: float = 0.0,
        once: bool = False,
        keep: bool = True,
    ) -> Run:
        argv = [sys.executable, str(LOADGEN), "--url", url, "--bodies", str(bodies)]
        argv += ["--concurrency", str(concurrency), "--duration", str(duration)]
        out = self.workdir / f"load-{len(self.runs)}-{time.monotonic_ns()}.json"
        argv += ["--warmup", str(warmup), "--raw", "--out", str(out)]
        if rate:
            argv += ["--rate", str(rate)]
        if once:
            argv.append("--once")
        for header in self.headers:
            argv += ["--header", header]
        done = subprocess.run(argv, capture_output=True, check=False, timeout=duration + 600)
        if done.returncode != 0:
            raise RuntimeError(f"loadgen failed ({label}): {done.stderr.decode()[-2000:]}")
        figures = orjson.loads(out.read_bytes())
        run = Run(label, concurrency, figures)
        bad = {k: v for k, v in figures["statuses"].items() if not k.startswith("2")}
        self.say(
            f"  {label:14s} c={concurrency:<3d} {run.rps:9.1f} req/s  p50 {run.ms('p50'):8.2f}"
            f"  p99 {run.ms('p99'):8.2f} ms  ({figures['ok']} ok"
            + (f", not 2xx: {bad}" if bad else "")
            + (f", errors: {figures['errors']}" if figures["errors"] else "")
            + ")"
        )
        if keep:
            self.runs.append(run)
        return run


def pooled(label: str, concurrency: int, halves: Sequence[Run]) -> Run:
    """One run's figures from the halves of an alternating measurement."""
    latencies = [v for r in halves for v in r.figures["latencies_ms"]]
    seconds = sum(float(r.figures["seconds"]) for r in halves)
    statuses: dict[str, int] = {}
    for r in halves:
        for k, v in r.figures["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return Run(
        label,
        concurrency,
        {
            "ok": len(latencies),
            "statuses": statuses,
            "errors": {},
            "seconds": round(seconds, 3),
            "rps": round(len(latencies) / seconds, 1) if seconds else 0.0,
            "p50_ms": round(percentile(latencies, 50), 3),
            "p90_ms": round(percentile(latencies, 90), 3),
            "p99_ms": round(percentile(latencies, 99), 3),
            "max_ms": round(max(latencies), 3) if latencies else float("nan"),
        },
    )


@dataclass
class Report:
    bare: list[Run]
    hits: list[Run]
    paced: Run
    misses: list[Run]
    scorer: list[Run]
    acks: Run
    hit_share: float
    warm_ok: int
    hit_cpu: CpuPerRequest
    miss_cpu: CpuPerRequest
    notes: list[str]
    bare_cpu_us: float = float("nan")  # the bare server's CPU per request (approximate)


async def broker_acks(settings: Settings, sends: int, value: bytes) -> Run:
    """For scale: one record at a time to a topic of its own with the producer the API
    publishes with (`make_producer`: acks=all, the interactive linger), each awaited. A hit is
    published so before it is answered: this is that part of its latency."""
    topic = f"{settings.namespace}.bench-acks"
    admin = AIOKafkaAdminClient(**client_kwargs(settings), client_id="bench-api")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = make_producer(settings, client_id="bench-api", linger_ms=INTERACTIVE_LINGER_MS)
    await producer.start()
    latencies: list[float] = []
    try:
        began_all = time.perf_counter()
        for i in range(sends):
            began = time.perf_counter()
            await producer.send_and_wait(topic, value, key=b"%d" % i)
            latencies.append((time.perf_counter() - began) * 1000)
        seconds = time.perf_counter() - began_all
    finally:
        await producer.stop()
    return Run(
        "broker ack",
        1,
        {
            "ok": len(latencies),
            "statuses": {"200": len(latencies)},
            "seconds": round(seconds, 3),
            "rps": round(len(latencies) / seconds, 1),
            **{f"p{q}_ms": round(percentile(latencies, q), 3) for q in (50, 90, 99)},
        },
    )


def counts(status_port: int) -> dict[str, int]:
    found = get_json(f"http://127.0.0.1:{status_port}/status") or {}
    return {k: int(v) for k, v in found.items() if isinstance(v, int)}


@dataclass
class CpuPerRequest:
    """CPU seconds the API process spent, wall seconds, and the requests it counted
    (`/status`) over the runs measured. Per request: that CPU less what the process spends
    idle in as long (`idle_share` of a core: its consumers' polls, a fixed cost per replica,
    not per request); its decision indexer's work on the requests' decisions stays in."""

    pid: int
    status_port: int
    idle_share: float = 0.0
    cpu_s: float = 0.0
    system_s: float = 0.0  # of `cpu_s`, in the kernel (loopback sends run the receiver's TCP)
    wall_s: float = 0.0
    requests: int = 0

    def _cpu(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def _system(self) -> float:
        return float(psutil.Process(self.pid).cpu_times().system)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        before, cpu, began = counts(self.status_port), self._cpu(), time.monotonic()
        system = self._system()
        yield
        self.system_s += self._system() - system
        self.cpu_s += self._cpu() - cpu
        self.wall_s += time.monotonic() - began
        self.requests += counts(self.status_port).get("requests", 0) - before.get("requests", 0)

    def idle(self, seconds: float) -> float:
        """Measure the share of a core the process uses while nobody calls it."""
        cpu, began = self._cpu(), time.monotonic()
        time.sleep(seconds)
        self.idle_share = (self._cpu() - cpu) / (time.monotonic() - began)
        return self.idle_share

    @property
    def us(self) -> float:
        if not self.requests:
            return float("nan")
        busy = max(self.cpu_s - self.idle_share * self.wall_s, 0.0)
        return round(busy / self.requests * 1e6, 1)


def measure(
    args: argparse.Namespace,
    settings: Settings,
    loader: Loader,
    ports: dict[str, int],
    api_pid: int,
    say: Say,
    bare_pid: int | None = None,
) -> Report:
    rng = random.Random(args.seed)
    bare_url = f"http://127.0.0.1:{ports['bare']}{ROUTE}"
    api_url = f"http://127.0.0.1:{ports['api']}{ROUTE}"
    score_url = f"http://127.0.0.1:{ports['door']}{SCORE_ROUTE}"
    notes: list[str] = []

    warm_texts = post_texts(rng, args.warm_posts)
    hit_bodies = loader.bodies([moderate_body(t) for t in warm_texts])
    if args.hits_only:
        say(f"filling the cache: {len(warm_texts)} distinct posts, a model verdict each")
        warm_ok = asyncio.run(fill_cache(settings, warm_texts))
    else:
        say(f"warming the cache: {len(warm_texts)} distinct posts, scored once")
        warm = loader.load(
            "warm (misses)", api_url, hit_bodies, concurrency=4, once=True, keep=False
        )
        warm_ok = int(warm.figures["ok"])
    if warm_ok < len(warm_texts):
        notes.append(f"warm-up: {len(warm_texts) - warm_ok} posts not decided {warm.figures}")

    say("closed loop, bare endpoint and cache hits, level by level")
    bare: list[Run] = []
    hits: list[Run] = []
    before = counts(ports["api_health"])
    hit_cpu = CpuPerRequest(api_pid, ports["api_health"])
    miss_cpu = CpuPerRequest(api_pid, ports["api_health"])
    idle = hit_cpu.idle(args.idle_seconds)
    miss_cpu.idle_share = idle
    say(f"the API idle: {idle:.1%} of a core")
    bare_cpu_s = bare_requests = 0.0
    for c in args.concurrency:
        cpu_before = process_cpu(bare_pid)
        bare.append(
            loader.load(
                "bare",
                bare_url,
                hit_bodies,
                concurrency=c,
                duration=args.duration,
                warmup=args.warmup,
            )
        )
        bare_cpu_s += process_cpu(bare_pid) - cpu_before
        # Its warm-up's requests too, at the counted rate (the bare server counts nothing).
        bare_requests += (
            bare[-1].figures["requests"] * (args.duration + args.warmup) / args.duration
        )
        with hit_cpu.measuring():
            hits.append(
                loader.load(
                    "hit",
                    api_url,
                    hit_bodies,
                    concurrency=c,
                    duration=args.duration,
                    warmup=args.warmup,
                )
            )
    after = counts(ports["api_health"])
    requests = after.get("requests", 0) - before.get("requests", 0)
    hit_share = (after.get("cache_hit", 0) - before.get("cache_hit", 0)) / max(requests, 1)

    best_hit = max(r.rps for r in hits)
    rate = round(best_hit / 2, 1)
    say(f"open loop: cache hits at {rate} req/s (half of {best_hit})")
    paced = loader.load(
        "hit_paced",
        api_url,
        hit_bodies,
        concurrency=512,
        duration=args.paced_duration,
        warmup=args.warmup,
        rate=rate,
    )

    say("misses: API and the scorer's door directly, alternating halves, fresh posts each")
    misses: list[Run] = []
    scorer: list[Run] = []
    for c in args.miss_concurrency:
        halves: dict[str, list[Run]] = {"miss": [], "scorer": []}
        for half in range(2):
            for label in ("scorer", "miss") if half == 0 else ("miss", "scorer"):
                texts = post_texts(rng, args.miss_posts // 2)
                if label == "miss":
                    path = loader.bodies([moderate_body(t) for t in texts])
                    url = api_url
                else:
                    path = loader.bodies([score_body(settings, t) for t in texts])
                    url = score_url
                with miss_cpu.measuring() if label == "miss" else contextlib.nullcontext():
                    halves[label].append(
                        loader.load(f"{label} ½", url, path, concurrency=c, once=True, keep=False)
                    )
        misses.append(pooled("miss", c, halves["miss"]))
        scorer.append(pooled("scorer", c, halves["scorer"]))
        loader.runs += [misses[-1], scorer[-1]]
    say("for scale: the broker's acknowledgement of one decision-sized record at a time")
    acks = asyncio.run(broker_acks(settings, args.ack_sends, CONSTANT.ljust(900)))
    loader.say(
        f"  broker ack     c=1   {acks.rps:9.1f} rec/s  p50 {acks.ms('p50'):8.2f}"
        f"  p99 {acks.ms('p99'):8.2f} ms"
    )
    say(f"API CPU per request: hit {hit_cpu.us} µs, miss {miss_cpu.us} µs")
    report = Report(
        bare, hits, paced, misses, scorer, acks, hit_share, warm_ok, hit_cpu, miss_cpu, notes
    )
    if bare_requests:
        report.bare_cpu_us = round(bare_cpu_s / bare_requests * 1e6, 1)
    say(f"bare endpoint CPU per request: {report.bare_cpu_us} µs")
    return report


def render(
    report: Report, args: argparse.Namespace, extra: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    lines = [
        f"{'what':12s} {'conc':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s}"
        f" {'ok':>7s}  not 2xx"
    ]
    rows = [*report.bare, *report.hits, report.paced, *report.misses, *report.scorer]
    rows.append(report.acks)
    for r in rows:
        bad = {k: v for k, v in r.figures["statuses"].items() if not k.startswith("2")}
        conc = f"@{r.figures.get('rate', 0):g}/s" if r is report.paced else str(r.concurrency)
        lines.append(
            f"{r.label:12s} {conc:>5s} {r.rps:9.1f} {r.ms('p50'):8.2f} {r.ms('p90'):8.2f}"
            f" {r.ms('p99'):8.2f} {r.figures['ok']:7d}  {bad or ''}"
        )
    bare_rps = max(r.rps for r in report.bare)
    hit_rps = max(r.rps for r in report.hits)
    ratio = hit_rps / bare_rps if bare_rps else 0.0
    nan = float("nan")
    miss = (
        report.misses[-1]
        if report.misses
        else Run("miss", 0, {"rps": nan, "p50_ms": nan, "p99_ms": nan})
    )
    scorer = (
        report.scorer[-1]
        if report.scorer
        else Run("scorer", 0, {"rps": nan, "p50_ms": nan, "p99_ms": nan})
    )
    over = miss.ms("p99") - scorer.ms("p99")
    summary: dict[str, Any] = {
        "bench": "api",
        "bare_rps": bare_rps,
        "hit_rps": hit_rps,
        "hit_ratio": round(ratio, 3),
        "hit_p99_ms": report.paced.ms("p99"),
        "hit_p50_ms": report.paced.ms("p50"),
        "hit_paced_rps": report.paced.rps,
        "miss_rps": miss.rps,
        "miss_p50_ms": miss.ms("p50"),
        "miss_p99_ms": miss.ms("p99"),
        "scorer_rps": scorer.rps,
        "scorer_p50_ms": scorer.ms("p50"),
        "scorer_p99_ms": scorer.ms("p99"),
        "miss_over_scorer_p99_ms": round(over, 3),
        "miss_concurrency": miss.concurrency,
        "api_cpu_us_per_hit": report.hit_cpu.us,
        "api_cpu_us_per_miss": report.miss_cpu.us,
        "api_idle_core_share": round(report.hit_cpu.idle_share, 4),
        "bare_cpu_us_per_request": report.bare_cpu_us,
        "cpu_bound_hit_ratio": (
            round(report.bare_cpu_us / report.hit_cpu.us, 3)
            if report.hit_cpu.requests and report.hit_cpu.us
            else None
        ),
        "api_cpu_system_share_hit": round(
            report.hit_cpu.system_s / report.hit_cpu.cpu_s if report.hit_cpu.cpu_s else 0.0, 3
        ),
        "api_cpu_us_per_hit_gross": round(
            report.hit_cpu.cpu_s / max(report.hit_cpu.requests, 1) * 1e6, 1
        ),
        "api_cpu_us_per_miss_gross": round(
            report.miss_cpu.cpu_s / max(report.miss_cpu.requests, 1) * 1e6, 1
        ),
        "broker_ack_p50_ms": report.acks.ms("p50"),
        "broker_ack_p99_ms": report.acks.ms("p99"),
        "hit_share": round(report.hit_share, 4),
        "hit_ratio_target_met": ratio >= TARGET_HIT_RATIO,
        "hit_p99_target_met": report.paced.ms("p99") <= TARGET_HIT_P99_MS,
        "miss_over_scorer_target_met": (
            over <= TARGET_MISS_OVER_SCORER_MS if report.misses else None
        ),
        "levels": {
            r.label.replace(" ", "_") + ("" if r is report.paced else f"_c{r.concurrency}"): {
                "rps": r.rps,
                "p50_ms": r.ms("p50"),
                "p99_ms": r.ms("p99"),
                "ok": r.figures["ok"],
            }
            for r in rows
        },
        **extra,
    }
    lines += [
        "",
        f"hit / bare throughput   {ratio:.3f}  (target ≥ {TARGET_HIT_RATIO}: "
        f"{'met' if summary['hit_ratio_target_met'] else 'NOT met'})",
        f"hit p99 at {report.paced.figures.get('rate', 0):g} req/s  {report.paced.ms('p99'):.2f} ms"
        f"  (target ≤ {TARGET_HIT_P99_MS:g} ms: "
        f"{'met' if summary['hit_p99_target_met'] else 'NOT met'})",
        f"miss p99 − scorer p99 at c={miss.concurrency}  {over:.2f} ms  (target ≤ "
        f"{TARGET_MISS_OVER_SCORER_MS:g} ms: "
        f"{'met' if summary['miss_over_scorer_target_met'] else 'NOT met'})",
        f"hits among the hit runs' requests (API counters): {report.hit_share:.4f}",
        f"API CPU per request (its process, indexer included, less its idle "
        f"{report.hit_cpu.idle_share:.1%} of a core): hit {report.hit_cpu.us} µs, "
        f"miss {report.miss_cpu.us} µs; of a hit's, in the kernel: "
        f"{summary['api_cpu_system_share_hit']:.0%}",
        f"the bare endpoint's CPU per request: {report.bare_cpu_us} µs; bare / hit CPU (the "
        f"throughput ratio one core each would allow): {summary['cpu_bound_hit_ratio']}",
        *report.notes,
    ]
    return "\n".join(lines), summary


# --- the run --------------------------------------------------------------------------------


@contextlib.contextmanager
def broker(workdir: Path, say: Say, started: list[Child]) -> Iterator[str]:
    """`KAFKA_BOOTSTRAP`, or a memory-only tansu on a free port (stopped with the run)."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        say(f"broker: {os.environ['KAFKA_BOOTSTRAP']} (KAFKA_BOOTSTRAP)")
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    port = free_port()
    tansu = Child("tansu", tansu_command(port), dict(os.environ), workdir / "tansu.log").start()
    started.append(tansu)
    tansu.wait_for(lambda: port_open(port), 30)
    say(f"broker: tansu at 127.0.0.1:{port}")
    yield f"127.0.0.1:{port}"


def delete_keys(url: str, namespace: str) -> int:
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        keys = list(client.scan_iter(match=f"gs:{namespace}:*", count=2000))
        for i in range(0, len(keys), 2000):
            deleted += int(client.unlink(*keys[i : i + 2000]))
    finally:
        client.close()
    return deleted


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pipeline_bench() -> Any:
    """bench/pipeline.py, for its profile summary (bench/ holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_pipeline", HERE / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def known_settings() -> set[str]:
    """Every env name guardstream reads (it refuses a `GUARDSTREAM_*` name it does not know)."""
    return {name for setting in every_setting() for name in setting.env}


def levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds per phase)")
    parser.add_argument("--concurrency", type=levels, help="closed-loop levels (1,8,32,64)")
    parser.add_argument("--miss-concurrency", type=levels, help="miss levels (1,4)")
    parser.add_argument("--duration", type=float, help="seconds counted per level (6)")
    parser.add_argument("--warmup", type=float, help="seconds not counted first (1)")
    parser.add_argument("--paced-duration", type=float, help="open-loop seconds (10)")
    parser.add_argument("--warm-posts", type=int, help="distinct posts cached first (200)")
    parser.add_argument("--miss-posts", type=int, help="fresh posts per miss level, each (80)")
    parser.add_argument("--ack-sends", type=int, help="records for the broker-ack reference (300)")
    parser.add_argument(
        "--idle-seconds", type=float, help="the API's idle CPU measured this long (3)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--namespace", help="default: a new one, deleted afterwards")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GUARDSTREAM_BENCH_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (env GUARDSTREAM_BENCH_API_KEY); without "
        "one the API runs with GUARDSTREAM_API_AUTH=off",
    )
    parser.add_argument("--results", type=Path, help="also write the output to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the API under cProfile, write its stats here and print where its time goes "
        "(its figures are then inflated)",
    )
    parser.add_argument(
        "--api-code",
        type=Path,
        metavar="DIR",
        help="run the API from this source tree's packages (PYTHONPATH=DIR; e.g. an earlier "
        "commit's `services/` from `git archive`), for a before/after on the same machine",
    )
    parser.add_argument(
        "--hits-only",
        action="store_true",
        help="no scorer: the cache is filled directly (a model verdict per post) and only the "
        "bare endpoint and hits are measured (no miss figures)",
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    defaults: dict[str, Any] = (
        {
            "concurrency": [1, 8],
            "miss_concurrency": [2],
            "duration": 1.5,
            "warmup": 0.3,
            "paced_duration": 2.0,
            "warm_posts": 16,
            "miss_posts": 8,
            "ack_sends": 20,
            "idle_seconds": 1.0,
        }
        if args.quick
        else {
            "concurrency": [1, 8, 32, 64],
            "miss_concurrency": [1, 4],
            "duration": 6.0,
            "warmup": 1.0,
            "paced_duration": 10.0,
            "warm_posts": 200,
            "miss_posts": 80,
            "ack_sends": 300,
            "idle_seconds": 3.0,
        }
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.hits_only:
        args.miss_concurrency = []

    began = time.monotonic()
    load_start = os.getloadavg()
    say: Say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    # A benchmark of its own: no `make up` env file, only the settings given here.
    os.environ.setdefault("GUARDSTREAM_ENV_FILE", "")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis.Redis.from_url(redis_url, socket_timeout=2).ping()
    own_namespace = args.namespace is None
    namespace = args.namespace or f"benchapi{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="gs-bench-api-"))
    headers = [f"Authorization: Bearer {args.api_key}"] if args.api_key else []
    failed = True
    try:
        with children() as started, broker(workdir, say, started) as bootstrap:
            settings = Settings(
                namespace=namespace,
                kafka={"bootstrap": bootstrap},
                redis={"url": redis_url},
                model={"name": "tiny"},
                engine={"max_model_len": MAX_MODEL_LEN},
            )
            asyncio.run(ensure_topics(settings))
            say(f"namespace {namespace}; logs in {workdir}")
            ports = {
                name: free_port() for name in ("bare", "api", "door", "api_health", "scorer_health")
            }
            env = {
                **os.environ,
                "GUARDSTREAM_NAMESPACE": namespace,
                "KAFKA_BOOTSTRAP": bootstrap,
                "REDIS_URL": redis_url,
                "GUARDSTREAM_MODEL": "tiny",
                "GUARDSTREAM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            }
            if not args.api_key and AUTH_SETTING in known_settings():
                env[AUTH_SETTING] = "off"
            py = sys.executable
            scorer = (
                None
                if args.hits_only
                else Child(
                    "scorer",
                    [py, "-m", "guardstream", "scorer"],
                    {
                        **env,
                        "GUARDSTREAM_HEALTH_PORT": str(ports["scorer_health"]),
                        "GUARDSTREAM_SCORER_INTERACTIVE_PORT": str(ports["door"]),
                    },
                    workdir / "scorer.log",
                )
            )
            if scorer is not None:
                started.append(scorer.start())
            api = Child(
                "api",
                [py, "-c", cpu_profiled(args.profile)]
                if args.profile
                else [py, "-m", "guardstream", "api"],
                {
                    **env,
                    "GUARDSTREAM_HEALTH_PORT": str(ports["api_health"]),
                    "GUARDSTREAM_API_PORT": str(ports["api"]),
                    "GUARDSTREAM_API_SCORER_URL": f"http://127.0.0.1:{ports['door']}",
                    **({"PYTHONPATH": str(args.api_code.resolve())} if args.api_code else {}),
                },
                workdir / "api.log",
            ).start()
            started.append(api)
            bare = Child(
                "bare",
                [py, str(Path(__file__).resolve()), "--serve-bare", str(ports["bare"])],
                dict(os.environ),
                workdir / "bare.log",
            ).start()
            started.append(bare)
            bare.wait_for(lambda: port_open(ports["bare"]), 60)
            api.wait_for(ready_at(ports["api_health"]), 120)
            if scorer is not None:
                say("bare endpoint and API ready; waiting for the scorer (vLLM CPU start-up)")
                scorer.wait_for(ready_at(ports["scorer_health"]), 900)
                scorer.wait_for(lambda: port_open(ports["door"]), 60)
            say(f"all ready after {time.monotonic() - began:.0f} s")
            loader = Loader(workdir, headers, say)
            assert api.proc is not None
            assert bare.proc is not None
            report = measure(args, settings, loader, ports, api.proc.pid, say, bare.proc.pid)
        load_end = os.getloadavg()
        extra = {
            "api_code": str(args.api_code) if args.api_code else None,
            "auth": "bearer key" if args.api_key else "off",
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "load_1m_start": round(load_start[0], 2),
            "load_1m_end": round(load_end[0], 2),
            "quick": args.quick,
            "wall_s": round(time.monotonic() - began, 1),
        }
        table, summary = render(report, args, extra)
        last = orjson.dumps(summary).decode()
        print(table)
        if args.profile is not None and args.profile.exists():
            print(f"\nthe API under cProfile ({args.profile}; the figures above are inflated):")
            print(pipeline_bench().profile_summary(args.profile, top=25))
        print(last, flush=True)
        if args.results is not None:
            commented = "\n".join(f"# {line}" for line in table.splitlines())
            args.results.write_text(f"{commented}\n{last}\n")
        failed = False
        return 0
    finally:
        if own_namespace:
            with contextlib.suppress(redis.RedisError):
                say(f"deleted {delete_keys(redis_url, namespace):,} redis keys gs:{namespace}:*")
        if failed or args.keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
