"""`guardstream doctor` checks the moderation API and the scorer's interactive door it calls:
against the real `guardstream api` process, nothing on the ports, and a foreign HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from guardstream.devtools import doctor
from guardstream.devtools.doctor import Finding, Status, check_api, diagnose, healthy
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from tests.conftest import free_port
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def api_settings(settings: Settings, api_port: int, door_port: int) -> Settings:
    return settings.replace(
        api={"port": api_port, "scorer_url": f"http://127.0.0.1:{door_port}"},
    )


@pytest.fixture
def foreign_server() -> Iterator[int]:
    """Some other HTTP service (not guardstream's): 404 for every path."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


async def test_nothing_running_yet_is_a_warning_that_says_how_to_start_it(
    settings: Settings,
) -> None:
    checked = api_settings(settings, free_port(), free_port())
    found = by_check(await check_api(checked))
    assert found["api"].status is Status.WARN, found
    assert f"127.0.0.1:{checked.api.port}" in found["api"].detail
    assert "guardstream api" in found["api"].hint
    assert found["scorer door"].status is Status.WARN, found
    assert "GUARDSTREAM_SCORER_INTERACTIVE_PORT" in found["scorer door"].hint
    assert healthy(list(found.values()))


async def test_another_service_on_either_port_fails(
    settings: Settings, foreign_server: int
) -> None:
    found = by_check(await check_api(api_settings(settings, foreign_server, foreign_server)))
    assert found["api"].status is Status.FAIL, found
    assert "not as the moderation API" in found["api"].detail
    assert found["scorer door"].status is Status.FAIL, found
    assert "HTTP 404" in found["scorer door"].detail
    assert "not the scorer's door" in found["scorer door"].detail


async def test_a_url_that_names_another_port_than_the_door_fails_before_any_call(
    settings: Settings,
) -> None:
    checked = api_settings(settings, free_port(), 8095).replace(scorer={"interactive_port": 9001})
    door = by_check(await check_api(checked))["scorer door"]
    assert door.status is Status.FAIL
    assert "port 8095" in door.detail
    assert "GUARDSTREAM_SCORER_INTERACTIVE_PORT is 9001" in door.detail
    bad = by_check(await check_api(settings.replace(api={"scorer_url": "ftp://scorer:1"})))
    assert bad["scorer door"].status is Status.FAIL
    assert "scheme" in bad["scorer door"].detail


def test_the_doors_path_and_the_apis_title_are_the_programs_own() -> None:
    """Doctor names them itself (it must not import the scorer's engine to check a URL)."""
    from guardstream.api.app import TITLE
    from guardstream.scorer.door import SCORE_PATH

    assert doctor.DOOR_PATH == SCORE_PATH
    assert doctor.API_TITLE == TITLE


async def test_the_running_api_is_ok_and_an_unreachable_door_then_fails(
    settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    api_port, door_port = free_port(), free_port()
    env = env_for(
        settings,
        GUARDSTREAM_API_PORT=str(api_port),
        GUARDSTREAM_API_SCORER_URL=f"http://127.0.0.1:{door_port}",
    )
    api = Process("api", env, tmp_path).start()
    try:
        api.wait_ready(timeout=120)
        checked = api_settings(settings, api_port, door_port)
        found = by_check(await diagnose(checked))
        assert found["api"].status is Status.OK, found["api"]
        assert f"127.0.0.1:{api_port}" in found["api"].detail
        # The API runs and its door is closed: every cache miss would be a 503.
        door = found["scorer door"]
        assert door.status is Status.FAIL, door
        assert "answers cache misses 503" in door.detail
        assert not healthy(list(found.values()))
    finally:
        api.stop()


def test_doctor_command_reports_the_api_checks(settings: Settings, tmp_path: Path) -> None:
    import subprocess
    import sys

    import orjson

    env = env_for(
        settings,
        GUARDSTREAM_API_PORT=str(free_port()),
        GUARDSTREAM_API_SCORER_URL=f"http://127.0.0.1:{free_port()}",
        GUARDSTREAM_ENV_FILE="",
    )
    asyncio.run(ensure_topics(settings))
    done = subprocess.run(
        [sys.executable, "-m", "guardstream", "doctor", "--json"],
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    report = orjson.loads(done.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["api"]["status"] == "warn", checks
    assert checks["scorer door"]["status"] == "warn", checks
    assert report["settings"]["api.scorer_url"].startswith("http://127.0.0.1:")
