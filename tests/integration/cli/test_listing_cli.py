"""Listing commands never cut an id: `topics list` on a terminal narrower than its names folds
them (every name can be read back whole from the table), and `--json` gives one object a line
for scripts (`topics list`, `settings`). Run as a user runs them, in a child process."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from guardstream.contracts.topics import TopicNames

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAMESPACE = "a-long-namespace-for-staging-eu-west-1"


def run(*args: str, columns: int = 80) -> str:
    env = {**os.environ, "GUARDSTREAM_NAMESPACE": NAMESPACE, "COLUMNS": str(columns)}
    done = subprocess.run(
        [sys.executable, "-m", "guardstream", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def first_column(table: str) -> list[str]:
    """The first column's cells, each row's folded lines joined (a row starts where the
    second column has a value)."""
    cells: list[str] = []
    for line in table.splitlines():
        parts = line.split("│")
        if len(parts) < 3:
            continue  # borders and the header's rule
        first, second = parts[1].strip(), parts[2].strip()
        if second:
            cells.append(first)
        elif cells:
            cells[-1] += first
    return cells


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_topics_list_folds_names_and_never_cuts_them(columns: int) -> None:
    table = run("topics", "list", columns=columns)
    assert "…" not in table
    assert first_column(table) == list(TopicNames(NAMESPACE).all().values())
    assert max(map(len, table.splitlines())) <= columns


def test_topics_list_json_is_one_object_a_line() -> None:
    rows = [orjson.loads(line) for line in run("topics", "list", "--json").splitlines()]
    names = TopicNames(NAMESPACE).all()
    assert [r["topic"] for r in rows] == list(names.values())
    assert [r["catalogue_name"] for r in rows] == [t.value for t in names]
    assert all(isinstance(r["partitions"], int) and r["partitions"] > 0 for r in rows)


def test_settings_json_is_one_object_a_line() -> None:
    rows = [orjson.loads(line) for line in run("settings", "--json").splitlines()]
    by_path = {r["setting"]: r for r in rows}
    assert by_path["namespace"] == {
        "setting": "namespace",
        "env": ["GUARDSTREAM_NAMESPACE"],
        "value": NAMESPACE,
    }
    assert isinstance(by_path["process.max_text_chars"]["value"], int)
