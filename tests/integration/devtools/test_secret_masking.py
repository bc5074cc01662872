"""Secrets in connection URLs never reach an output: `guardstream settings`, `doctor --json`
and a process's start-up log line, run for real with Hypothesis-generated URLs that carry a
password in the user info and/or a query value (`?password=`, `?sslpassword=`, `?token` ...).

Doctor runs its real checks against the real Redis and PostgreSQL (local addresses only, so no
name lookups) and a broker port that is closed; URLs that do not parse (`host:abc`, `[zz]`, a
port out of range) must come out as a failed check, never a traceback.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.runtime.logs import JsonFormatter
from guardstream.runtime.process import serve
from guardstream.runtime.settings import Settings
from tests.conftest import free_port
from tests.support.hostile_urls import url_with_secrets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Local hosts only (no name lookups), each scheme on its own server's port: a Redis client
# talking to PostgreSQL's port would wait out its timeout.
LOCAL = ("127.0.0.1", "[::1]", "localhost", "127.0.0.1:abc", "[zz]", "[::1")
BAD_PORTS = (":99999999", ":", ":x")
REDIS_URLS = url_with_secrets(("redis", "rediss", "unix"), LOCAL, ("", ":6379", *BAD_PORTS))
DATABASE_URLS = url_with_secrets(("postgresql", "postgres"), LOCAL, ("", ":5432", *BAD_PORTS))
OTLP_URLS = url_with_secrets(("https",), LOCAL)


def leaked(secrets: list[str], output: str) -> list[str]:
    return [s for s in secrets if s in output]


@pytest.fixture
def env(redis_url: str, database_url: str) -> dict[str, str]:
    """What every run shares: nothing listens on the broker port, the model is not there."""
    return {
        "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "GUARDSTREAM_MODEL": "/nonexistent/guardstream-model",
        "COLUMNS": "100000",  # rich wraps table cells at the terminal width
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(redis=REDIS_URLS, database=DATABASE_URLS, otlp=OTLP_URLS)
def test_settings_command_prints_no_secret(
    env: dict[str, str],
    redis: tuple[str, list[str]],
    database: tuple[str, list[str]],
    otlp: tuple[str, list[str]],
) -> None:
    urls = {
        "REDIS_URL": redis[0],
        "DATABASE_URL": database[0],
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp[0],
    }
    result = CliRunner().invoke(app, ["settings"], env={**env, **urls})
    assert result.exit_code == 0, result.output
    assert "redis.url" in result.output
    assert not leaked(redis[1] + database[1] + otlp[1], result.output)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(redis=REDIS_URLS, database=DATABASE_URLS)
def test_doctor_json_prints_no_secret_and_fails_unparsable_urls(
    env: dict[str, str], redis: tuple[str, list[str]], database: tuple[str, list[str]]
) -> None:
    urls = {"REDIS_URL": redis[0], "DATABASE_URL": database[0]}
    result = CliRunner().invoke(app, ["doctor", "--json"], env={**env, **urls})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 1  # the broker is down whatever the URLs
    assert not leaked(redis[1] + database[1], result.output)
    report = orjson.loads(result.output.strip().splitlines()[-1])
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["redis"]["status"] in ("ok", "FAIL")
    assert checks["postgresql"]["status"] in ("ok", "FAIL")
    for name, url in (("redis", redis[0]), ("postgresql", database[0])):
        if any(bad in url for bad in ("127.0.0.1:abc", "[zz]", "[::1/", "[::1?", "[::1:")):
            assert checks[name]["status"] == "FAIL", checks[name]


@pytest.fixture
def startup_log() -> Iterator[io.StringIO]:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("guardstream.runtime.process")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Built(Exception):
    """Raised by the test's `build` once `serve` has logged its start-up line."""


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(redis=REDIS_URLS, database=DATABASE_URLS, otlp=OTLP_URLS)
def test_the_start_up_log_line_carries_no_secret(
    startup_log: io.StringIO,
    redis: tuple[str, list[str]],
    database: tuple[str, list[str]],
    otlp: tuple[str, list[str]],
) -> None:
    current = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis={"url": SecretStr(redis[0])},
        database={"url": SecretStr(database[0])},
        telemetry={"otlp_endpoint": otlp[0]},
        kafka={"bootstrap": f"127.0.0.1:{free_port()}"},
    )

    async def build(*_: object) -> None:
        raise Built

    startup_log.seek(0)
    startup_log.truncate()
    with pytest.raises(Built):
        asyncio.run(
            serve(
                current,
                name="triage",
                source_topic="unused",
                max_records=1,
                max_in_flight=1,
                build=build,  # type: ignore[arg-type]
                stop=asyncio.Event(),
            )
        )
    line = orjson.loads(startup_log.getvalue().splitlines()[0])
    assert line["msg"] == "starting"
    assert "redis.url" in line["settings"]
    assert not leaked(redis[1] + database[1] + otlp[1], startup_log.getvalue())
