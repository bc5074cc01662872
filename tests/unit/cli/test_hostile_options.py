"""Hostile values for the options of `guardstream policy …` and `guardstream feedback …`, and
hostile pack files: each is a refusal naming the option or the file (exit 2 for a usage
error, 1 for a refused pack or an unknown run), never a traceback and never a silently empty
result. The commands run in-process through the typer app (`run` raises anything that is not
an exit, so a crash fails the test with its traceback)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.contracts.topics import CATALOGUE
from guardstream.policy import parse_pack_file
from guardstream.policy.loader import MAX_PACK_DEPTH, MAX_PACK_FILE_BYTES
from guardstream.policy.reloader import pack_digest
from guardstream.runtime.settings import topic_overrides

pytestmark = pytest.mark.unit
TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # contracts.events.Tenant, fullmatched

DEFAULT = 'id: default\nversion: "1"\ntenants: ["*"]\n'
GOOD = 'id: acme\nversion: "1"\ntenants: [acme]\n'
HOSTILE_TEXT = st.text(
    st.characters(codec=None, exclude_categories=()), max_size=60
)  # NUL, controls, lone surrogates
FAST = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    assert "Traceback" not in done.stderr
    return done.exit_code, done.stdout, done.stderr


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry directory with a default pack, an empty archive, a scratch folder."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "packs").mkdir()
    (root / "packs" / "default.yaml").write_text(DEFAULT)
    (root / "archive").mkdir()
    (root / "in").mkdir()
    (root / "good.yaml").write_text(GOOD)
    return root


def deep(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def bomb() -> str:
    """Billion laughs: nine aliases a level, nine levels, in a field the pack has."""
    lines = ['id: x\nversion: "1"\ntenants: [x]\nalways_block: &a0 ["lol", "lol", "lol"]']
    lines += [f"note{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\nrules: *a8\n"


@settings(FAST, max_examples=8)
@given(body=st.binary(max_size=300))
@example(body=b"\xff\xfeid: x\n")  # not UTF-8: the byte and its line
@example(body=deep(MAX_PACK_DEPTH + 500).encode())  # was a RecursionError
@example(body=bomb().encode())
@example(body=b"id: x\n" + b"#" * MAX_PACK_FILE_BYTES)  # over a megabyte
@example(body=GOOD.encode())
def test_a_hostile_pack_file_is_refused_with_its_name_never_a_traceback(
    place: Path, body: bytes
) -> None:
    source = place / "in" / "candidate.yaml"
    source.write_bytes(body)
    before = pack_digest(place / "packs")
    for args in (
        ("policy", "lint", str(source)),
        ("policy", "apply", str(source), "--as", "cand.yaml", "--dir", str(place / "scratch")),
        ("policy", "backtest", "--pack", str(source), "--archive", str(place / "archive")),
    ):
        code, stdout, stderr = run(*args, env={"GUARDSTREAM_POLICY_DIR": str(place / "packs")})
        if body == GOOD.encode():
            assert code in {0, 2}  # apply: --dir does not exist (exit 2, named)
        else:
            assert code in {1, 2}, (args, stdout, stderr)
            assert "candidate.yaml" in stdout + stderr or "--dir" in stderr
    assert pack_digest(place / "packs") == before


def test_a_pack_path_that_is_no_file_is_refused_before_it_is_opened(place: Path) -> None:
    fifo = place / "in" / "fifo.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)  # reading it would block forever
    for path, why in (
        (fifo, "fifo.yaml: not a regular file"),
        (place / "packs", "packs: not a regular file"),  # lint reads a directory as one
        (place / "in" / "missing.yaml", "missing.yaml: cannot be read (No such file"),
    ):
        for args in (
            ("policy", "lint", str(path)),
            ("policy", "apply", str(path), "--dir", str(place / "packs")),
        ):
            if args[1] == "lint" and path.is_dir():
                continue
            code, stdout, stderr = run(*args)
            assert code == 1
            assert why in stdout + stderr
    code, _, stderr = run("policy", "backtest", "--pack", str(place / "in" / "notes.txt"))
    assert (code, "--pack") == (2, stderr.split(":")[0])  # would have changed nothing


def test_a_device_named_like_a_pack_in_the_directory_does_not_hang_the_reload(
    tmp_path: Path,
) -> None:
    (tmp_path / "default.yaml").write_text(DEFAULT)
    os.mkfifo(tmp_path / "fifo.yaml")
    pack_digest(tmp_path)  # the processes' poll: would block on the FIFO
    code, stdout, _ = run("policy", "lint", str(tmp_path))
    assert code == 1
    assert "fifo.yaml: not a regular file" in stdout


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), HOSTILE_TEXT, st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(HOSTILE_TEXT, st.integers()), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(["categories", "region_names", "rules", "experiment", "candidate"]),
    value=values,
)
@example(field="categories", value={"\x00": {"description": "\ud800"}})
@example(field="region_names", value={"IN": ["\x1b[2J"]})
@example(field="rules", value=[{"when": {"category": 7}, "then": None}])
@example(field="rules", value=[[[[[[]]]]]])
@example(field="experiment", value={"candidate": "\x00", "percent": "10"})
@example(field="experiment", value={"candidate": ["y"], "percent": 1e309, "extra": None})
@example(field="candidate", value="\ud800")
def test_hostile_values_in_pack_fields_are_problems_with_a_line(field: str, value: object) -> None:
    text = yaml.safe_dump(
        {"id": "x", "version": "1", "tenants": ["x"], field: value}, allow_unicode=True
    )
    _, problems = parse_pack_file("x.yaml", text)
    assert all(p.line is not None for p in problems), problems


@given(text=st.text(max_size=30))
@example(text="99999999999999d")  # was OverflowError
@example(text="999999999d")  # before year 1
@example(text="\udcff")  # an argument that was not UTF-8
@example(text="[red]x")
@example(text="7d")
@FAST
def test_since_is_a_span_or_a_date_else_a_usage_error_naming_it(place: Path, text: str) -> None:
    code, _, stderr = run(
        "policy",
        "backtest",
        "--pack",
        str(place / "good.yaml"),
        "--since",
        text,
        "--archive",
        str(place / "archive"),
        "--dir",
        str(place / "packs"),
        "--json",
    )
    assert code in {0, 2}
    if code == 2:
        assert "Invalid value for '--since'" in stderr


@given(tenant=HOSTILE_TEXT)
@example(tenant="\udcff")
@example(tenant="Acme")
@example(tenant="acme")
@FAST
def test_tenant_is_a_tenant_name_else_a_usage_error_naming_it(place: Path, tenant: str) -> None:
    args = ("--archive", str(place / "archive"), "--dir", str(place / "packs"), "--json")
    code, _, stderr = run(
        "policy", "backtest", "--pack", str(place / "good.yaml"), *args, "--tenant", tenant
    )
    assert code == (0 if TENANT.fullmatch(tenant) else 2), stderr
    if code == 2:
        assert "Invalid value for '--tenant'" in stderr
        # Refused before the database is opened (was: a filter that matched nothing).
        for command in (
            ("feedback", "clusters"),
            ("feedback", "casebook"),
            ("policy", "ab-report"),
        ):
            code, _, stderr = run(*command, "--tenant", tenant)
            assert code == 2, command
            assert "Invalid value for '--tenant'" in stderr, command


@given(run_id=HOSTILE_TEXT, by=HOSTILE_TEXT)
@example(run_id="fb-unknown", by="dpo-7")
@example(run_id="../../etc/passwd", by="dpo-7")
@example(run_id="\udcff", by="\x00")
@example(run_id="fb-1", by="x" * 129)
@FAST
def test_approving_an_unknown_run_or_as_a_hostile_id_says_why(
    place: Path, run_id: str, by: str
) -> None:
    adapters = place / "adapters"
    adapters.mkdir(exist_ok=True)
    env = {"GUARDSTREAM_ADAPTER_DIR": str(adapters), "GUARDSTREAM_FEEDBACK_DIR": str(place)}
    before = {p.name: p.read_bytes() for p in adapters.iterdir() if p.name != ".lock"}
    code, _, stderr = run("feedback", "approve", run_id, "--by", by, env=env)
    assert code == 1
    assert stderr.startswith("cannot approve: ")
    assert {p.name: p.read_bytes() for p in adapters.iterdir() if p.name != ".lock"} == before


def test_outputs_and_directories_that_cannot_be_used_are_named(place: Path) -> None:
    common = ("--archive", str(place / "archive"), "--dir", str(place / "packs"))
    code, _, stderr = run(
        "policy",
        "backtest",
        "--pack",
        str(place / "good.yaml"),
        *common,
        "--html",
        "/nonexistent/r.html",
    )
    assert code == 2
    assert stderr.startswith("--html: cannot write /nonexistent/r.html")
    code, _, stderr = run(
        "policy",
        "backtest",
        "--pack",
        str(place / "good.yaml"),
        "--archive",
        str(place / "good.yaml"),
    )
    assert code == 2
    assert "--archive" in stderr
    for args in (("history",), ("rollback", "default"), ("apply", str(place / "good.yaml"))):
        code, _, stderr = run("policy", *args, "--dir", str(place / "good.yaml"))
        assert code == 2
        assert stderr.startswith("--dir: ") and "is not a directory" in stderr


@given(value=st.text(max_size=60))
@example(value="posts.v1=3")
@example(value="post.v1=3")  # a typo: was ignored, the topic kept its retention
@example(value="posts.v1=nan")
@example(value="=3,\x00=1")
@FAST
def test_topic_retention_overrides_name_catalogue_topics_or_are_refused(value: str) -> None:
    try:
        overrides = topic_overrides(value)
    except ValueError as exc:
        assert str(exc).startswith("retention.topic_days: ")
        return
    assert set(overrides) <= {spec.topic.value for spec in CATALOGUE}
    assert all(0 < days <= 3650 for days in overrides.values())


def test_maintenance_with_an_unknown_topic_override_stops_before_any_store() -> None:
    code, _, stderr = run(
        "maintenance", "--json", env={"GUARDSTREAM_RETENTION_TOPIC_DAYS": "post.v1=3"}
    )
    assert code == 2
    assert "invalid configuration" in stderr
    assert "'post.v1' is no catalogue topic" in stderr
