"""`stack up`'s env file: what it chooses, what it keeps, what it never writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from guardstream.devtools.stack import (
    BLOCK_END,
    BLOCK_START,
    PROCESSES,
    EnvFile,
    StackConfig,
    _choose,
    _external_bootstrap,
)
from guardstream.runtime.settings import Settings, every_setting
from tests.support.observability import LOCAL_SCRAPE_CONFIG, ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in every_setting():
        for name in field.env:
            monkeypatch.delenv(name, raising=False)


def write(path: Path, config: StackConfig, bootstrap: str | None = "127.0.0.1:9092") -> EnvFile:
    env_file = EnvFile.read(path)
    env_file.write(_choose(config, env_file, bootstrap))
    return EnvFile.read(path)


def test_a_fresh_checkout_gets_the_local_choices_every_command_then_reads(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    write(path, StackConfig(tmp_path / "run", review_port=8091))
    settings = Settings(_env_file=path)
    assert settings.model.name == "tiny"
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert (settings.review.port, settings.review.cookie_secure) == (8091, False)
    assert settings.review.session_secret is not None
    assert settings.model.adapter_dir == (tmp_path / "run" / "adapters").resolve()
    assert path.stat().st_mode & 0o077 == 0  # a session secret: the owner's only


def test_a_persons_lines_stay_as_written_and_win(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    mine = "# my settings\nGUARDSTREAM_MODEL=Qwen/Qwen3Guard-Gen-4B\nOTHER_TOOL=1\n"
    path.write_text(mine)
    config = StackConfig(tmp_path / "run")
    first = write(path, config)
    text = path.read_text()
    assert text.startswith(mine) and BLOCK_START in text and text.endswith(BLOCK_END + "\n")
    assert "GUARDSTREAM_MODEL" not in first.ours
    assert Settings(_env_file=path).model.name == "Qwen/Qwen3Guard-Gen-4B"
    write(path, config)
    assert path.read_text() == text  # again: the same file, the same session secret


def test_what_the_environment_set_is_kept_for_the_commands_run_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".env"
    config = StackConfig(tmp_path / "run")
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "mine")
    monkeypatch.setenv("GUARDSTREAM_HEALTH_PORT", "1234")  # per process: never written
    written = write(path, config)
    assert written.ours["GUARDSTREAM_NAMESPACE"] == "mine"
    assert "GUARDSTREAM_HEALTH_PORT" not in written.ours
    monkeypatch.delenv("GUARDSTREAM_NAMESPACE")
    assert write(path, config).ours["GUARDSTREAM_NAMESPACE"] == "mine"  # the stack runs with it
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "other")
    assert write(path, config).ours["GUARDSTREAM_NAMESPACE"] == "other"


def test_only_a_bootstrap_set_by_a_person_means_a_cluster_of_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".env"
    write(path, StackConfig(tmp_path / "run"), bootstrap="127.0.0.1:9092")
    assert _external_bootstrap(EnvFile.read(path)) is None  # the local broker, ours
    path.write_text("KAFKA_BOOTSTRAP=kafka.example:9092\n" + path.read_text())
    assert _external_bootstrap(EnvFile.read(path)) == "kafka.example:9092"
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "env.example:9092")
    assert _external_bootstrap(EnvFile.read(path)) == "env.example:9092"


def test_the_local_prometheus_scrapes_every_process_make_up_starts() -> None:
    config = yaml.safe_load(LOCAL_SCRAPE_CONFIG.read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    base = 9464  # the Makefile's METRICS_PORT_BASE
    stack = StackConfig(Path(".run"), metrics_port_base=base)
    assert targets == {
        f"guardstream-{name}": [f"127.0.0.1:{stack.metrics_port(name)}"] for name in PROCESSES
    }
    assert f"METRICS_PORT_BASE ?= {base}" in (ROOT / "Makefile").read_text()


def test_settings_that_would_not_start_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("GUARDSTREAM_MODLE=tiny\n")  # a typo of a person's
    env_file = EnvFile.read(path)
    with pytest.raises(ValidationError, match="did you mean GUARDSTREAM_MODEL"):
        env_file.write(_choose(StackConfig(tmp_path / "run"), env_file, "127.0.0.1:9092"))
    assert path.read_text() == "GUARDSTREAM_MODLE=tiny\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]  # no draft left behind
