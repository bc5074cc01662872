"""Start guardstream processes as a user would (separate OS processes), and kill them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import URLError

from guardstream.runtime.settings import Settings
from tests.conftest import free_port


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process use exactly `settings`."""
    env = {
        **os.environ,
        "GUARDSTREAM_NAMESPACE": settings.namespace,
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "REDIS_URL": settings.redis.url.get_secret_value(),
        "DATABASE_URL": settings.database.url.get_secret_value(),
        "GUARDSTREAM_REVIEW_DB_SCHEMA": settings.database.review_schema,
        "GUARDSTREAM_MODEL": settings.model.name,
        "GUARDSTREAM_MODEL_CACHE_DIR": str(settings.model.cache_dir),
        "GUARDSTREAM_MAX_MODEL_LEN": str(settings.engine.max_model_len),
        "GUARDSTREAM_POLL_TIMEOUT_MS": str(settings.process.poll_timeout_ms),
        "GUARDSTREAM_RETRY_BACKOFF_MAX_S": str(settings.process.retry_backoff_max_s),
        "GUARDSTREAM_FEEDBACK_DIR": str(settings.feedback.dir),
    }
    env.update(extra)
    return env


class Process:
    """One guardstream process in its own process group, as in its own container.

    The scorer's vLLM engine runs in child processes (engine core, workers) that outlive a
    SIGKILLed parent; a container runtime or systemd kills them with it, so `kill` with
    SIGKILL and `stop` do the same to the whole group, and anything left of a process that
    died by itself (a fault point) is reaped when it is waited for.
    """

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "GUARDSTREAM_HEALTH_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guardstream", self.name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except (URLError, OSError):
            return False

    def health(self) -> dict[str, object]:
        """`/healthz`: liveness and the runtime's gauges (in-flight records and their peak)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
            return dict(json.loads(r.read()))

    def wait_adapter_generation(self, generation: int, timeout: float = 60) -> None:
        """Wait until the process serves adapter registry `generation` or a later one (its
        `/healthz` says which it serves)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.health().get("adapter_generation")
            if isinstance(seen, int) and seen >= generation:
                return
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            assert time.monotonic() < deadline, (
                f"{self.name} serves adapter registry generation {seen}, "
                f"not {generation}, after {timeout} s"
            )
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            assert time.monotonic() < deadline, f"{self.name} not ready: {self.log()[-3000:]}"
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """SIGKILL: the process and its children at once; other signals: the process only."""
        assert self.proc is not None
        if sig == signal.SIGKILL:
            self._kill_group()
        else:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._kill_group()  # what a graceful exit or a self-kill left behind
        return code

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself (e.g. at a fault point); reap its children."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._kill_group()
        return code

    def _kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        self._kill_group()
        self.proc.wait(timeout=30)
