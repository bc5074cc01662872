"""`guardstream policy apply / rollback / history / lint` on a pack registry directory of the
test's own (guardstream.policy.history; the commands run in-process through the typer app).
What the processes then make of the directory is test_reloader's and the triage reload test's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.policy import PACKS_DIR, load_packs
from guardstream.policy.reloader import pack_digest

pytestmark = pytest.mark.unit

DEFAULT = 'id: default\nversion: "{v}"\ntenants: ["*"]\ncontroversial: {mode}\n'
FORUM = (
    'id: forum\nversion: "{v}"\ntenants: [forum]\n---\n'
    'id: forum-cn\nversion: "{v}"\ntenants: [forum]\nregions: [CN]\n'
)


def run(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, done.stdout, done.stderr


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    directory = tmp_path / "packs"
    directory.mkdir()
    (directory / "default.yaml").write_text(DEFAULT.format(v=1, mode="review"))
    return directory


def candidate(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refs(directory: Path) -> set[str]:
    return {p.ref for p in load_packs(directory).packs}


def test_apply_then_rollback_restores_the_previous_version_in_one_command(
    registry: Path, tmp_path: Path
) -> None:
    new = candidate(tmp_path, "default.yaml", DEFAULT.format(v=2, mode="strict"))
    code, stdout, _ = run("policy", "apply", str(new), "--dir", str(registry), "--note", "tighter")
    assert code == 0, stdout
    assert "default@2" in stdout
    assert refs(registry) == {"default@2"}

    code, stdout, _ = run("policy", "rollback", "default", "--dir", str(registry))
    assert code == 0, stdout
    assert refs(registry) == {"default@1"}
    assert load_packs(registry).default.controversial == "review"

    # History: what was there by hand, the apply, the rollback; nothing under it is loaded.
    code, stdout, _ = run("policy", "history", "--json", "--dir", str(registry))
    rows = [orjson.loads(line) for line in stdout.splitlines()]
    assert [(r["seq"], r["action"], r["packs"]) for r in rows] == [
        (1, "found", {"default": "1"}),
        (2, "apply", {"default": "2"}),
        (3, "rollback", {"default": "1"}),
    ]
    assert rows[1]["note"] == "tighter"
    assert sorted(p.name for p in registry.iterdir() if not p.name.startswith(".")) == [
        "default.yaml"
    ]


def test_rollback_to_a_named_version_and_files_holding_several_packs(
    registry: Path, tmp_path: Path
) -> None:
    for v in (1, 2, 3):
        new = candidate(tmp_path, "forum.yaml", FORUM.format(v=v))
        assert run("policy", "apply", str(new), "--dir", str(registry))[0] == 0
    assert refs(registry) == {"default@1", "forum@3", "forum-cn@3"}

    code, stdout, _ = run("policy", "rollback", "forum", "--to", "1", "--dir", str(registry))
    assert code == 0, stdout
    # The file goes back whole: its region override with it.
    assert refs(registry) == {"default@1", "forum@1", "forum-cn@1"}
    code, stdout, _ = run("policy", "rollback", "forum", "--to", "7", "--dir", str(registry))
    assert code == 1
    assert refs(registry) == {"default@1", "forum@1", "forum-cn@1"}

    code, stdout, _ = run("policy", "history", "forum-cn", "--dir", str(registry))
    assert code == 0
    assert stdout.count("forum-cn@") == 4  # three applies and the rollback


def test_a_bad_file_is_refused_with_every_problem_and_nothing_is_written(
    registry: Path, tmp_path: Path
) -> None:
    before = pack_digest(registry)
    bad = candidate(
        tmp_path, "default.yaml", DEFAULT.format(v=2, mode="sometimes") + "always_blok: []\n"
    )
    code, _, stderr = run("policy", "apply", str(bad), "--dir", str(registry))
    assert code == 1
    assert "2 problem(s)" in stderr
    assert "controversial" in stderr
    assert "always_blok" in stderr
    # A changed pack under the same version, or a second default pack in another file.
    same = candidate(tmp_path, "default.yaml", DEFAULT.format(v=1, mode="strict"))
    assert run("policy", "apply", str(same), "--dir", str(registry))[0] == 1
    other = candidate(
        tmp_path,
        "other.yaml",
        DEFAULT.format(v=9, mode="strict").replace("id: default", "id: other"),
    )
    code, _, stderr = run("policy", "apply", str(other), "--dir", str(registry))
    assert code == 1
    assert "claimed twice" in stderr
    assert pack_digest(registry) == before
    assert run("policy", "history", "--json", "--dir", str(registry))[1] == ""


def test_rollback_without_history_says_why(registry: Path) -> None:
    code, _, stderr = run("policy", "rollback", "default", "--dir", str(registry))
    assert code == 1
    assert "no history for pack 'default'" in stderr


def test_without_a_directory_the_commands_say_what_to_set(tmp_path: Path) -> None:
    code, _, stderr = run("policy", "history")
    assert code == 2
    assert "GUARDSTREAM_POLICY_DIR" in stderr


def test_lint_prints_every_problem_with_its_file_and_accepts_the_shipped_packs(
    tmp_path: Path,
) -> None:
    code, stdout, _ = run("policy", "lint", str(PACKS_DIR))
    assert code == 0
    assert "default@" in stdout
    shutil.copytree(PACKS_DIR, tmp_path / "packs")
    (tmp_path / "packs" / "broken.yml").write_text("id: Broken\nversion: 1\ntenants: x\n")
    code, stdout, _ = run("policy", "lint", str(tmp_path / "packs"))
    assert code == 1
    problems = stdout.splitlines()
    assert len(problems) == 3
    assert all(line.startswith("broken.yml: ") for line in problems)
    code, stdout, _ = run("policy", "lint", str(tmp_path / "packs" / "broken.yml"))
    assert code == 1
    assert len(stdout.splitlines()) == 3


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(max_size=40), body=st.text(max_size=200))
@example(name="../escape.yaml", body=DEFAULT.format(v=5, mode="review"))
@example(name=".hidden.yaml", body=DEFAULT.format(v=5, mode="review"))
@example(name="default.yaml", body="id: default\x00\n")
@example(name="default.yaml", body="\ud800")
def test_hostile_names_and_bodies_are_refused_or_applied_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, name: str, body: str
) -> None:
    root = tmp_path_factory.mktemp("case")
    directory = root / "packs"
    directory.mkdir()
    (directory / "default.yaml").write_text(DEFAULT.format(v=1, mode="review"))
    source = tmp_path_factory.mktemp("in") / "candidate.yaml"
    source.write_bytes(body.encode("utf-8", "surrogatepass"))
    code, _, _ = run("policy", "apply", str(source), "--as", name, "--dir", str(directory))
    assert code in {0, 1}
    assert os.listdir(root) == ["packs"]  # nothing written outside the directory
    load_packs(directory)  # whatever happened, the directory still loads
