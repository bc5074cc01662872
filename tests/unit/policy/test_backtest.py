"""`guardstream policy backtest`: reviewed posts replayed through a candidate and the packs in
force (policy/backtest.py, pure), and the command on a generated review archive with the
shipped example packs (terminal, JSON and HTML with its confusion-matrix SVG)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.cli.backtest_report import confusion_svg
from guardstream.cli.policy import parse_since
from guardstream.contracts.events import Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.policy import PACKS_DIR, PolicyPack, PolicyRegistry
from guardstream.policy.backtest import Case, PackGate, backtest, gate
from guardstream.verdict.archive import Archive

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE
SELF_HARM, VIOLENT = "Suicide & Self-Harm", "Violent"
NOW = datetime.now(UTC)


def registry(**default: Any) -> PolicyRegistry:
    fields = {
        "id": "default",
        "version": "1",
        "tenants": ["*"],
        "review_below": {"unsafe": 0.7},
        **default,
    }
    return PolicyRegistry([PolicyPack.model_validate(fields)])


def case(verdict: Verdict, human: Verdict, conf: float | None = 0.9, *cats: str) -> Case:
    return Case("acme", None, "default@1", verdict, tuple(cats), conf, human)


CASES = [
    case(U, U, 0.95, VIOLENT),  # blocked by both
    case(U, S, 0.95, VIOLENT),  # a false positive under both
    case(C, U, 0.80, SELF_HARM),  # review → block under strict
    case(C, S, 0.80),  # review → block under strict: a new false positive
    case(S, S, 0.95),  # allowed by both
    case(U, U, 0.50, VIOLENT),  # low confidence: review under both
]


def test_a_stricter_candidate_changes_exactly_the_cases_it_should_and_says_what_it_costs() -> None:
    report = backtest(CASES, registry(), registry(version="2", controversial="strict")).to_dict()
    assert report["cases"] == 6
    assert report["changed"] == 2
    assert report["moves"] == [{"from": "review", "to": "block", "cases": 2}]
    before, after = report["baseline"], report["candidate"]
    assert before["actions"] == {"allow": 1, "block": 2, "review": 3}
    assert after["actions"] == {"allow": 1, "block": 4, "review": 1}
    assert before["unsafe_recall"] == pytest.approx(1 / 3)
    assert after["unsafe_recall"] == pytest.approx(2 / 3)
    assert before["false_positive_rate"] == pytest.approx(1 / 3)
    assert after["false_positive_rate"] == pytest.approx(2 / 3)
    assert before["precision"] == {"allow": 1.0, "block": 0.5}
    assert after["precision"] == {"allow": 1.0, "block": 0.5}
    assert after["review_rate"] == pytest.approx(1 / 6)
    assert after["confusion"]["safe"] == {"allow": 1, "block": 2, "review": 0}
    # Per model category: a case counts under each category it names, or "None".
    cats = report["by_category"]
    assert {name: (g["cases"], g["changed"]) for name, g in cats.items()} == {
        "None": (2, 1),
        SELF_HARM: (1, 1),
        VIOLENT: (3, 0),
    }
    assert report["baseline_packs"] == ["default@1"]
    assert report["candidate_packs"] == ["default@2"]


def test_the_baseline_uses_the_pack_version_that_decided_when_it_is_still_loaded() -> None:
    both = PolicyRegistry(
        [
            PolicyPack.model_validate({"id": "default", "version": "1", "tenants": ["*"]}),
            PolicyPack.model_validate(
                {"id": "forum", "version": "1", "tenants": ["forum"], "controversial": "loose"}
            ),
        ]
    )
    decided_by_forum = Case("acme", None, "forum@1", C, (), 0.9, S)
    report = backtest([decided_by_forum], both, both).to_dict()
    assert report["baseline"]["actions"]["allow"] == 1  # forum@1 decided it: loose
    assert report["candidate"]["actions"]["review"] == 1  # acme's pack now: default
    assert report["changed"] == 1


def test_an_empty_archive_reports_zero_cases_without_dividing_by_zero() -> None:
    report = backtest([], registry(), registry()).to_dict()
    assert report["cases"] == 0
    assert report["baseline"]["unsafe_recall"] is None
    assert report["candidate"]["precision"] == {"allow": None, "block": None}


@given(st.sampled_from(["7d", "12h", "30m", "2026-12-01", "2026-12-01T10:00:00+08:00"]))
def test_since_reads_spans_and_dates(text: str) -> None:
    assert parse_since(text, NOW) <= NOW


# --- the command, on a generated archive ------------------------------------------------------


def sample(
    n: int,
    tenant: str,
    pred: Verdict,
    conf: float,
    cats: tuple[str, ...],
    human: Verdict,
    *,
    age: timedelta = timedelta(hours=1),
) -> FeedbackSample:
    return FeedbackSample.model_validate(
        {
            "event_id": f"e-{n}",
            "produced_at": NOW - age,
            "sample_id": f"r-{n}",
            "post_id": f"p-{n}",
            "tenant": tenant,
            "text": f"post number {n} <script>alert(1)</script>",
            "content_key": f"{n:032x}",
            "pred_verdict": pred,
            "pred_categories": cats,
            "pred_confidence": conf,
            "human_verdict": human,
            "reviewer": "rv-1",
            "policy": "default@1",
            "model": "tiny",
            "reviewed_at": NOW - age,
        }
    )


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "feedback"
    Archive(root, writer_id="test").append(
        [
            # The health forum's pack sends self-harm to review whatever the verdict.
            sample(1, "health-forum", U, 0.95, (SELF_HARM,), U),
            sample(2, "health-forum", U, 0.95, (SELF_HARM,), U),
            sample(3, "health-forum", U, 0.95, (VIOLENT,), S),
            sample(4, "health-forum", S, 0.95, (), S),
            sample(5, "acme", U, 0.95, (SELF_HARM,), U),  # another tenant: default both ways
            sample(6, "health-forum", U, 0.95, (SELF_HARM,), U, age=timedelta(days=30)),
        ]
    )
    return root


def run(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, done.stdout, done.stderr


def test_backtest_of_the_shipped_example_pack_on_a_generated_archive(
    archive: Path, tmp_path: Path
) -> None:
    baseline = tmp_path / "in-force"
    baseline.mkdir()
    shutil.copyfile(PACKS_DIR / "default.yaml", baseline / "default.yaml")
    example = PACKS_DIR / "example-health-forum.yaml"
    common = ["--pack", str(example), "--dir", str(baseline), "--archive", str(archive)]

    code, stdout, stderr = run("policy", "backtest", *common, "--since", "7d", "--json")
    assert code == 0, stderr
    report = orjson.loads(stdout)
    assert report["cases"] == 5  # the 30-day-old review is outside the window
    assert report["changed"] == 2
    assert report["moves"] == [{"from": "block", "to": "review", "cases": 2}]
    assert report["by_category"][SELF_HARM]["changed"] == 2
    assert report["by_category"][VIOLENT]["changed"] == 0
    assert report["baseline"]["unsafe_recall"] == 1.0
    assert report["candidate"]["unsafe_recall"] == pytest.approx(1 / 3)
    assert "health-forum@2026.1" in report["candidate_packs"]

    page = tmp_path / "report.html"
    code, stdout, stderr = run(
        "policy",
        "backtest",
        *common,
        "--since",
        "60d",
        "--tenant",
        "health-forum",
        "--html",
        str(page),
    )
    assert code == 0, stderr
    assert "Per category" in stdout
    assert "block precision" in stdout
    html = page.read_text()
    assert "<svg" in html
    assert "<script" not in html  # nothing from the data is markup
    assert "on\n5 reviewed cases" in html  # 5 health-forum cases in 60 days
    for svg in html.split("<svg")[1:]:
        ElementTree.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")  # well-formed


def test_a_bad_candidate_is_refused_with_its_problems(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "default.yaml"
    bad.write_text('id: default\nversion: "2"\ntenants: ["*"]\ncontroversial: maybe\n')
    code, stdout, _ = run("policy", "backtest", "--pack", str(bad), "--archive", str(archive))
    assert code == 1
    assert stdout.startswith("default.yaml: controversial")


def test_the_confusion_plot_escapes_what_it_shows() -> None:
    svg = confusion_svg({"<safe>": {"a&b": 3, "review": 0}}, 'title "x" <y>')
    tree = ElementTree.fromstring(svg)
    texts = [t.text for t in tree.iter("{http://www.w3.org/2000/svg}text")]
    assert "a&b" in texts
    assert "human <safe>" in texts


# --- the promotion gate -----------------------------------------------------------------------


def test_the_gate_wants_evidence_and_no_worse_false_positives_or_recall() -> None:
    same, strict = registry(), registry(version="2", controversial="strict")
    assert gate(backtest(CASES, same, strict), PackGate(min_cases=7))[0] is False
    passed, why = gate(backtest(CASES, same, strict), PackGate(min_cases=6))
    assert not passed
    assert why.startswith("false-positive rate 0.667 > 0.333")
    loose = registry(version="2", review_below={"unsafe": 0.99})  # the 0.95 blocks → review
    passed, why = gate(backtest(CASES, same, loose), PackGate(min_cases=6))
    assert not passed
    assert why.startswith("unsafe recall 0.000 < 0.333")
    passed, why = gate(backtest(CASES, same, registry(version="2")), PackGate(min_cases=6))
    assert passed
    assert why == (
        "6 cases, 0 change; false-positive rate 0.333 → 0.333, unsafe recall 0.333 → 0.333"
    )


def test_apply_with_the_gate_refuses_a_pack_that_would_miss_unsafe_posts(
    archive: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "in-force"
    directory.mkdir()
    shutil.copyfile(PACKS_DIR / "default.yaml", directory / "default.yaml")
    example = PACKS_DIR / "example-health-forum.yaml"
    common = ["--dir", str(directory), "--archive", str(archive), "--min-cases", "5"]
    code, _, stderr = run("policy", "apply", str(example), "--gate", *common)
    assert code == 1
    assert "the promotion gate refused it: unsafe recall 0.333 < 1.000" in stderr
    assert sorted(p.name for p in directory.iterdir()) == ["default.yaml"]

    # The same pack without self-harm always reviewed changes nothing here: it passes.
    milder = tmp_path / "example-health-forum.yaml"
    text = example.read_text()
    milder.write_text(text.replace('always_review: ["Suicide & Self-Harm"]', "always_review: []"))
    code, _, stderr = run("policy", "apply", str(milder), "--gate", *common)
    assert code == 0, stderr
    history = run("policy", "history", "--json", "--dir", str(directory))[1]
    assert "gate: 5 cases, 0 change" in history
