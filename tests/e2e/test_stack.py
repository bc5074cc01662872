"""The product as a user runs it: `guardstream stack up`, `produce --wait`, `stack down`.

Separate OS processes (broker, triage, scorer) started by the CLI, talking over real sockets
to the real broker, Redis and the vLLM engine. The tests share one stack and run in any order;
`stack down` and a clean shutdown in the logs are checked when the module is done with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

GUARDSTREAM = [sys.executable, "-m", "guardstream"]


def run(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GUARDSTREAM, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, model_cache_dir: Path
) -> Iterator[dict[str, str]]:
    run_dir = tmp_path_factory.mktemp("stack")
    kafka_port = free_port()
    health = free_port()
    env = {
        **os.environ,
        "GUARDSTREAM_NAMESPACE": f"e2e{os.getpid()}",
        "GUARDSTREAM_MODEL": "tiny",
        "GUARDSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "GUARDSTREAM_MAX_MODEL_LEN": "2048",
        "REDIS_URL": redis_url,
    }
    env.pop("KAFKA_BOOTSTRAP", None)  # the stack starts its own broker on kafka_port
    up = run(
        [
            "stack",
            "up",
            "--run-dir",
            str(run_dir),
            "--kafka-port",
            str(kafka_port),
            "--health-port-base",
            str(health),
        ],
        env,
    )
    env["KAFKA_BOOTSTRAP"] = f"127.0.0.1:{kafka_port}"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "triage ready" in up.stdout and "scorer ready" in up.stdout
        yield {**env, "RUN_DIR": str(run_dir)}
    finally:
        down = run(["stack", "down", "--run-dir", str(run_dir)], env, timeout=120)
    # The processes shut down cleanly: checked after every test of the module has used the
    # stack, whatever their order (a failure here is an error at the last test's teardown).
    assert down.returncode == 0, down.stdout + down.stderr
    for name in ("triage", "scorer"):
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
