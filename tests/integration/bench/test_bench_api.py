"""`make bench-api` (bench/api.py) in its quick mode, as a user runs it: its own broker, the
real Redis, the scorer on the tiny checkpoint (vLLM CPU), the API and the bare endpoint as
processes. Its last line is one JSON object whose figures are numbers, measured from answered
requests; the speed targets are printed, never asserted here (one shared 2-core machine).
About a minute: a `chaos` variant (`make chaos`), kept out of `make test`'s time budget."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(900)]

BENCH = Path(__file__).resolve().parents[3] / "bench" / "api.py"
FIGURES = (
    "bare_rps",
    "hit_rps",
    "hit_ratio",
    "hit_p50_ms",
    "hit_p99_ms",
    "miss_p50_ms",
    "miss_p99_ms",
    "scorer_p50_ms",
    "scorer_p99_ms",
    "miss_over_scorer_p99_ms",
    "broker_ack_p50_ms",
    "api_cpu_us_per_hit",
    "api_cpu_us_per_miss",
    "hit_share",
)
TARGETS = ("hit_ratio_target_met", "hit_p99_target_met", "miss_over_scorer_target_met")


def test_the_quick_bench_prints_its_figures_last_as_one_json_line(
    redis_url: str, tmp_path: Path
) -> None:
    results = tmp_path / "api.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--results", str(results)],
        capture_output=True,
        timeout=840,
        check=False,
        env={**os.environ, "REDIS_URL": redis_url},
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    last = done.stdout.decode().strip().splitlines()[-1]
    summary = orjson.loads(last)

    for name in FIGURES:
        value = summary[name]
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value), (name, value)
    for name in TARGETS:
        assert isinstance(summary[name], bool), (name, summary[name])
    # Throughputs and latencies were measured from answered requests, not left at zero.
    for name in ("bare_rps", "hit_rps", "hit_p99_ms", "miss_p99_ms", "scorer_p99_ms"):
        assert summary[name] > 0, (name, summary)
    assert summary["hit_ratio"] == pytest.approx(summary["hit_rps"] / summary["bare_rps"], 1e-2)
    assert 0 <= summary["hit_share"] <= 1
    assert summary["hit_p50_ms"] <= summary["hit_p99_ms"]
    # The results file holds the same line, after the table as comments.
    written = results.read_text().splitlines()
    assert written[-1] == last
    assert all(line.startswith("#") for line in written[:-1])
