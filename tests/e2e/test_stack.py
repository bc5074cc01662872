"""The product as a user runs it: `guardstream stack up`, `produce --wait`, the README's and
the docs' command blocks as written, `stack down`.

Separate OS processes (broker, triage, scorer, SLA timer, review console) started by the CLI,
talking over real sockets to the real broker, Redis, PostgreSQL and the vLLM engine. One stack
serves every test of the module, in any order; the docs' blocks run against it without a
terminal, without the network and with nothing but the env file `stack up` wrote to tell them
where it is. The README's closing `make down` is the module's teardown: it stops the stack as a
reader would, then a clean shutdown is checked in every process's log.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from guardstream.runtime.settings import every_setting
from tests.conftest import free_port, missing

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

GUARDSTREAM = [sys.executable, "-m", "guardstream"]
ROOT = Path(__file__).parents[2]


def run(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GUARDSTREAM, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    database_url: str,
    model_cache_dir: Path,
) -> Iterator[dict[str, str]]:
    run_dir = tmp_path_factory.mktemp("stack")
    ports = {
        "kafka": free_port(),
        "health": free_port(),
        "review": free_port(),
        "api": free_port(),
        "scorer": free_port(),
    }
    namespace = f"e2e{os.getpid()}"
    env = {
        **os.environ,
        "GUARDSTREAM_ENV_FILE": str(run_dir / ".env"),  # written by `stack up`
        "GUARDSTREAM_NAMESPACE": namespace,
        "GUARDSTREAM_REVIEW_DB_SCHEMA": namespace,
        "GUARDSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "GUARDSTREAM_MAX_MODEL_LEN": "2048",
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
    }
    env.pop("KAFKA_BOOTSTRAP", None)  # the stack starts its own broker on its port
    # Not the env file of a checkout this test runs in: only the one the stack writes.
    env.pop("GUARDSTREAM_MODEL", None)
    up = run(
        [
            "stack",
            "up",
            "--run-dir",
            str(run_dir),
            "--kafka-port",
            str(ports["kafka"]),
            "--health-port-base",
            str(ports["health"]),
            "--review-port",
            str(ports["review"]),
            "--api-port",
            str(ports["api"]),
            "--scorer-port",
            str(ports["scorer"]),
        ],
        env,
    )
    env["KAFKA_BOOTSTRAP"] = f"127.0.0.1:{ports['kafka']}"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("triage", "scorer", "sla", "review", "api"):
            assert f"{name} ready" in up.stdout, up.stdout
        yield {
            **env,
            "RUN_DIR": str(run_dir),
            "UP_OUTPUT": up.stdout,
            **{f"PORT_{k.upper()}": str(v) for k, v in ports.items()},
        }
    finally:
        # The README's last line, as a reader runs it (`make down`: `guardstream stack down`).
        reader = as_a_reader(
            {
                **env,
                "RUN_DIR": str(run_dir),
                **{f"PORT_{k.upper()}": str(v) for k, v in ports.items()},
            }
        )
        down = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", README_STOP],
            cwd=ROOT,
            env=reader,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

        async def drop_schema() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop_schema())
    # Checked after every test of the module has used the stack, whatever their order (a
    # failure here is an error at the last test's teardown).
    assert down.returncode == 0, down.stdout + down.stderr
    for name in ("triage", "scorer", "review", "api"):
        log = (run_dir / f"{name}.log").read_text()
        assert '"msg":"stopping"' in log, log[-2000:]
        assert "Traceback" not in log, log[-3000:]


def test_produce_wait_prints_the_decision_as_one_json_line(stack: dict[str, str]) -> None:
    result = run(
        [
            "produce",
            "--text",
            "How can I make a bomb?",
            "--tenant",
            "acme",
            "--wait",
            "--timeout",
            "120",
        ],
        stack,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    decision = orjson.loads(lines[0])
    assert decision["verdict"] == "unsafe"
    assert decision["action"] == "block"
    assert decision["categories"] == ["Violent"]
    assert decision["tenant"] == "acme"
    assert decision["source"] in ("model", "cache")


def test_response_moderation_from_the_cli(stack: dict[str, str]) -> None:
    result = run(
        [
            "produce",
            "--kind",
            "response",
            "--prompt",
            "How can I make a bomb?",
            "--text",
            "Sorry, I can't help with that.",
            "--wait",
        ],
        stack,
    )
    assert result.returncode == 0, result.stderr
    decision = orjson.loads(result.stdout)
    assert (decision["verdict"], decision["refusal"]) == ("safe", True)


def test_samples_are_all_decided(stack: dict[str, str]) -> None:
    result = run(["produce", "--samples", "--wait", "--timeout", "180"], stack)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\n") >= 7
    assert "block" in result.stdout and "review" in result.stdout and "allow" in result.stdout


def test_invalid_cli_input_is_a_clear_error(stack: dict[str, str]) -> None:
    result = run(["produce", "--kind", "response", "--text", "no prompt given"], stack)
    assert result.returncode == 2
    assert "prompt" in result.stderr
    assert "Traceback" not in result.stderr


def demo_credentials(up_output: str) -> tuple[str, str]:
    found = re.search(r"demo reviewer\s+id (\S+), password (\S+)", up_output)
    assert found, up_output
    return found[1], found[2]


def test_up_prints_every_url_and_the_demo_reviewer_logs_in(stack: dict[str, str]) -> None:
    console = f"http://127.0.0.1:{stack['PORT_REVIEW']}"
    for url in (f"{console}/console", f"{console}/docs", f"127.0.0.1:{stack['PORT_KAFKA']}"):
        assert url in stack["UP_OUTPUT"], stack["UP_OUTPUT"]
    reviewer, password = demo_credentials(stack["UP_OUTPUT"])
    body = orjson.dumps({"reviewer": reviewer, "password": password})
    request = urllib.request.Request(
        f"{console}/api/v1/auth/token", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert orjson.loads(answer.read())["token"].startswith("gsr_")


def test_the_moderation_api_answers_curl_and_an_unmodified_openai_client(
    stack: dict[str, str],
) -> None:
    """Issue 20's door on the stack `make up` starts: `curl` on /v1/moderate and the `openai`
    SDK's `moderations.create`, both decided by the real scorer (the tiny model), with the
    demo tenant's key `up` printed and kept in the run directory; no key, no answer."""
    from openai import AuthenticationError, OpenAI

    api = f"http://127.0.0.1:{stack['PORT_API']}"
    assert f"{api}/v1/moderate" in stack["UP_OUTPUT"], stack["UP_OUTPUT"]
    key = (Path(stack["RUN_DIR"]) / "demo-api.key").read_text().strip()
    assert re.search(rf"demo API key\s+{key} \(tenant default", stack["UP_OUTPUT"])
    body = orjson.dumps({"text": "How can I make a bomb?"}).decode()
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"{api}/v1/moderate",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert curl.returncode == 0, curl.stdout + curl.stderr
    decided = orjson.loads(curl.stdout)
    assert decided["verdict"] == "unsafe" and decided["action"] == "block", decided
    with OpenAI(base_url=f"{api}/v1", api_key=key, max_retries=0) as client:
        answer = client.moderations.create(
            model="guardstream", input=["How can I make a bomb?", "今天天气很好,我们去公园散步吧。"]
        )
    assert [r.flagged for r in answer.results] == [True, False], answer
    with (
        OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0) as anonymous,
        pytest.raises(AuthenticationError),
    ):
        anonymous.moderations.create(input="hello")


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, a route is chosen
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_every_local_process_listens_on_loopback_only(stack: dict[str, str]) -> None:
    address = non_loopback_address()
    if address is None:
        missing("this machine has no address but loopback: loopback-only cannot be shown")
    ports = [
        int(stack["PORT_REVIEW"]),
        int(stack["PORT_API"]),
        int(stack["PORT_SCORER"]),
        *(int(stack["PORT_HEALTH"]) + i for i in (0, 1, 2, 4)),
    ]
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it is served ...
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
            pass  # ... on loopback only


COMMAND_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)[^\n]*\n(.*?)^```", re.M | re.S)


def command_blocks(page: Path, section: str | None) -> list[str]:
    """The shell blocks of `page` (of its `## section` when given), as a reader pastes them:
    prompts (`$ `) taken off."""
    text = page.read_text(encoding="utf-8")
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end >= 0 else None]
    blocks = [re.sub(r"^\$ ", "", b, flags=re.M) for b in COMMAND_BLOCK.findall(text)]
    assert blocks, f"{page.name}: no command blocks"
    return blocks


def as_a_reader(stack: dict[str, str]) -> dict[str, str]:
    """The environment of a person's shell in the checkout: no guardstream setting but the env
    file the stack wrote (the Makefile's ports pointed at this stack's), no network."""
    settings = {name for field in every_setting() for name in field.env}
    env = {k: v for k, v in os.environ.items() if k not in settings and not k.startswith("MAKE")}
    env.pop("MFLAGS", None)
    return {
        **env,
        "GUARDSTREAM_ENV_FILE": stack["GUARDSTREAM_ENV_FILE"],
        "RUN_DIR": stack["RUN_DIR"],
        "KAFKA_PORT": stack["PORT_KAFKA"],
        "HEALTH_PORT_BASE": stack["PORT_HEALTH"],
        "REVIEW_PORT": stack["PORT_REVIEW"],
        "API_PORT": stack["PORT_API"],
        "SCORER_PORT": stack["PORT_SCORER"],
        "METRICS_PORT_BASE": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **{proxy: "http://127.0.0.1:9" for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
        **{p.lower(): "http://127.0.0.1:9" for p in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


# In reading order; the README's last block ends with the line that stops the stack.
DOCS = [("docs/components/review.md", None), ("README.md", "Run it")]
README_STOP = "make down                                    # stops all of it"


@pytest.mark.parametrize(("page", "section"), DOCS, ids=[page for page, _ in DOCS])
def test_the_docs_command_blocks_work_as_written(
    stack: dict[str, str], page: str, section: str | None
) -> None:
    installed = ROOT / ".venv" / ".installed"
    if (
        not installed.exists()
        or installed.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime
    ):
        missing("`make up` would install .venv first: run `make install`")
    env = as_a_reader(stack)
    if page == "README.md":
        assert README_STOP in (ROOT / page).read_text(), "the README's stop line changed"
    for block in command_blocks(ROOT / page, section):
        # The README's closing `make down` stops the stack every test shares: the module's
        # teardown runs it, as written, once every test is done.
        block = block.replace(README_STOP, "")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        out, err = result.stdout[-3000:], result.stderr[-3000:]
        shown = f"{page}:\n{block}\n--- stdout\n{out}\n--- stderr\n{err}"
        assert result.returncode == 0, shown
        assert "Traceback" not in result.stdout + result.stderr, shown
        if "make up" in block:  # again: nothing new starts, the same demo reviewer
            for name in ("broker", "triage", "scorer", "sla", "review", "api"):
                assert f"{name} already running" in result.stdout, shown
            assert "started (pid" not in result.stdout, shown
            assert demo_credentials(result.stdout) == demo_credentials(stack["UP_OUTPUT"]), shown
            kept = (Path(stack["RUN_DIR"]) / "demo-api.key").read_text().strip()
            assert f"demo API key  {kept} " in result.stdout, shown  # the same key again
        if "produce --text" in block:
            assert '"verdict":"unsafe"' in result.stdout, shown
        if "doctor" in block:
            assert str(Path(stack["GUARDSTREAM_ENV_FILE"]).resolve()) in result.stdout, shown


def test_unreachable_model_names_the_offline_option(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GUARDSTREAM_MODEL": "Qwen/Qwen3Guard-Gen-0.6B",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path),
        "KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    result = run(["scorer"], env, timeout=180)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "GUARDSTREAM_MODEL=tiny" in result.stderr


def test_feedback_run_without_a_reachable_model_fails_at_once_saying_what_to_do(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "GUARDSTREAM_ENV_FILE": "",
        "GUARDSTREAM_MODEL": "Qwen/Qwen3Guard-Gen-0.6B",
        "GUARDSTREAM_ADAPTER_DIR": str(tmp_path / "adapters"),
        "GUARDSTREAM_FEEDBACK_DIR": str(tmp_path / "feedback"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = run(["feedback", "run", "--force"], env, timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "GUARDSTREAM_MODEL=tiny" in result.stderr
    assert "Traceback" not in result.stderr
