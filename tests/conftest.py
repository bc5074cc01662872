"""Shared fixtures: real infrastructure, isolated by name.

Every test gets its own namespace (topics, consumer groups, Redis key prefix). The broker is
`KAFKA_BOOTSTRAP` when set, otherwise a tansu broker this session starts on a free port. When
infrastructure is missing a test is skipped on a laptop and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from guardstream.runtime.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The checkout's `.env` (written by `make up`) is for the commands a person runs, not for the
# tests: they and the processes they start read no env file unless a test names one.
os.environ.setdefault("GUARDSTREAM_ENV_FILE", "")


def missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    from guardstream.devtools.stack import StackError, tansu_command

    port = free_port()
    try:
        command = tansu_command(port)
    except StackError as exc:
        missing(f"no Kafka broker: {exc}")
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        if not wait_for_port(port):
            missing(f"tansu did not start: {log.read_text()[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        missing(f"no Redis at {url}: {exc}")
    return url


@pytest.fixture(scope="session")
def database_url() -> str:
    """PostgreSQL (`DATABASE_URL`); tests isolate themselves with a schema of their own."""
    import asyncio

    import asyncpg

    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    async def check() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        asyncio.run(check())
    except (OSError, asyncpg.PostgresError) as exc:
        missing(f"no PostgreSQL at {url}: {exc}")
    return url


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return Path(
        os.environ.get("GUARDSTREAM_MODEL_CACHE_DIR", Path.home() / ".cache" / "guardstream")
    )


@pytest.fixture
def settings(
    kafka_bootstrap: str, redis_url: str, namespace: str, model_cache_dir: Path, tmp_path: Path
) -> Settings:
    return Settings(
        namespace=namespace,
        feedback={
            "dir": tmp_path / "feedback",  # never the user's archive
        },
        kafka={"bootstrap": kafka_bootstrap},
        redis={"url": redis_url},
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": 2048},
        process={"poll_timeout_ms": 100, "retry_backoff_max_s": 1.0},
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos",
        action="store_true",
        help="also run the long chaos variants (minutes each); `make chaos` passes it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long `chaos` variants are deselected (not skipped) from a plain `pytest`, so CI runs
    the short variant of each scenario; `--chaos` or a `-m` naming chaos brings them in."""
    if config.getoption("--chaos") or "chaos" in (config.option.markexpr or ""):
        return
    keep = [item for item in items if item.get_closest_marker("chaos") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
