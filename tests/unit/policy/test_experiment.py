"""A/B experiments between packs: the stable split (policy/experiment.py), the registry's
arms and checks (line-numbered, as `guardstream policy lint` prints them), and
`guardstream policy ab-report` on a generated review archive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.contracts.events import Arm, Post, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.devtools.produce import new_post
from guardstream.policy import PolicyLoadError, load_packs
from guardstream.policy.ab_report import NoExperimentError, ab_report
from guardstream.policy.backtest import Case
from guardstream.policy.experiment import BUCKETS, Experiment, arm_of, bucket
from guardstream.policy.lint import lint
from guardstream.verdict.archive import Archive

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE
NOW = datetime.now(UTC)

PACKS = """
id: default
version: "1"
tenants: ["*"]
---
id: market
version: "1"
tenants: [market]
experiment:
  candidate: market-next
  percent: {percent}
---
id: market-next
version: "2"
tenants: [market]
candidate: true
controversial: strict
"""


def packs(tmp_path: Path, text: str) -> Path:
    (tmp_path / "packs.yaml").write_text(text)
    return tmp_path


# --- the split -------------------------------------------------------------------------------

hostile = st.text() | st.text(st.characters(codec=None, categories=None), max_size=50)


@given(tenant=st.text(max_size=30), subject=hostile, percent=st.integers(0, 100))
@example(tenant="market", subject="\x00", percent=50)
@example(tenant="market", subject="\ud800", percent=50)  # a lone surrogate hashes, no raise
@example(tenant="market", subject="", percent=0)
@example(tenant="market", subject="a", percent=100)
def test_an_author_always_gets_one_arm_and_the_extremes_are_exact(
    tenant: str, subject: str, percent: int
) -> None:
    experiment = Experiment(candidate="next", percent=percent)
    arm = arm_of(experiment, tenant, subject)
    assert arm is arm_of(experiment, tenant, subject)
    assert 0 <= bucket(tenant, "next", subject) < BUCKETS
    if percent == 0:
        assert arm is Arm.CONTROL
    if percent == 100:
        assert arm is Arm.CANDIDATE


@given(subject=hostile, low=st.floats(0, 100), high=st.floats(0, 100))
@example(subject="author-1", low=10.0, high=10.01)
def test_raising_the_share_only_moves_authors_to_the_candidate(
    subject: str, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    before = arm_of(Experiment(candidate="next", percent=low), "t", subject)
    after = arm_of(Experiment(candidate="next", percent=high), "t", subject)
    assert not (before is Arm.CANDIDATE and after is Arm.CONTROL)


@settings(max_examples=20, deadline=None)
@given(percent=st.integers(1, 99), prefix=st.text(min_size=1, max_size=8))
@example(percent=10, prefix="author-")
def test_the_share_is_near_the_configured_percentage(percent: int, prefix: str) -> None:
    experiment = Experiment(candidate="next", percent=percent)
    n = 4000
    inside = sum(arm_of(experiment, "market", f"{prefix}{i}") is Arm.CANDIDATE for i in range(n))
    # Binomial: five standard deviations either side.
    sd = (n * percent / 100 * (1 - percent / 100)) ** 0.5
    assert abs(inside - n * percent / 100) <= 5 * sd


def test_megabyte_author_ids_are_refused_by_the_contract_before_any_split() -> None:
    post = new_post("hi", tenant="market").model_dump()
    for hostile_id in ("a" * 1_000_000, "a\x00b", "\ud800"):
        with pytest.raises(ValidationError, match="author_id"):
            Post.model_validate({**post, "author_id": hostile_id})


# --- the registry ----------------------------------------------------------------------------


def test_the_registry_sends_each_author_to_its_arm(tmp_path: Path) -> None:
    registry = load_packs(packs(tmp_path, PACKS.format(percent=30)))
    chosen = {author: registry.for_post("market", None, author) for author in map(str, range(2000))}
    assert {pack.ref for pack in chosen.values()} == {"market@1", "market-next@2"}
    for author, pack in chosen.items():
        expected = arm_of(Experiment(candidate="market-next", percent=30), "market", author)
        assert pack.arm is expected
    share = sum(p.candidate for p in chosen.values()) / len(chosen)
    assert 0.25 < share < 0.35
    # Without a subject (a caller with no post at hand), and for other tenants: no experiment.
    assert registry.for_post("market", None).ref == "market@1"
    assert registry.for_post("other", None, "0").arm is None


FIVE = PACKS.format(percent=5)


@pytest.mark.parametrize(
    ("text", "field", "line", "message"),
    [
        (PACKS.format(percent=101), "experiment.percent", 11, "less than or equal to 100"),
        (PACKS.format(percent='"10"'), "experiment.percent", 11, "a number from 0 to 100"),
        (PACKS.format(percent="true"), "experiment.percent", 11, "a number from 0 to 100"),
        (
            FIVE.replace("candidate: market-next", "candidate: nowhere"),
            "experiment.candidate",
            10,
            "no pack has the id 'nowhere'",
        ),
        (
            FIVE.replace("candidate: true", "candidate: false"),
            "experiment.candidate",
            10,
            "not marked candidate: true",
        ),
        (
            FIVE.replace("tenants: [market]\ncandidate: true", "tenants: [x]\ncandidate: true"),
            "experiment.candidate",
            10,
            "must list the tenants and regions",
        ),
        (
            FIVE.replace("candidate: market-next", "candidate: market"),
            "experiment",
            9,
            "names this pack itself",
        ),
        (
            FIVE.replace(
                "candidate: true", "candidate: true\nexperiment: {candidate: market, percent: 1}"
            ),
            "candidate",
            16,
            "cannot run an experiment",
        ),
        (
            FIVE.replace("experiment:\n  candidate: market-next\n  percent: 5\n", ""),
            "candidate",
            13,
            "named by no experiment",
        ),
        (
            FIVE.replace("percent: 5", "percent: 5\n  share: 3"),
            "experiment.share",
            12,
            "unknown field",
        ),
    ],
)
def test_lint_names_the_line_of_a_bad_experiment(
    tmp_path: Path, text: str, field: str, line: int, message: str
) -> None:
    problems = lint([packs(tmp_path, text)])
    found = [p for p in problems if (p.field, p.line) == (field, line)]
    assert found, problems
    assert message in found[0].message
    assert f"(line {line})" in str(found[0])
    with pytest.raises(PolicyLoadError):
        load_packs(tmp_path)


# --- the report ------------------------------------------------------------------------------


def test_the_report_compares_the_arms_against_the_reviewers(tmp_path: Path) -> None:
    registry = load_packs(packs(tmp_path, PACKS.format(percent=50)))

    def case(policy: str, pred: Verdict, human: Verdict) -> Case:
        return Case("market", None, policy, pred, (), 0.9, human)

    cases = [
        # control (controversial → review): 4 cases, 1 blocked, 2 reviewed, 1 allowed.
        case("market@1", U, U),
        case("market@1", C, S),
        case("market@1", C, U),
        case("market@1", S, S),
        # candidate (controversial → block): 4 cases, 3 blocked, one of them a safe post.
        case("market-next@2", U, U),
        case("market-next@2", C, S),
        case("market-next@2", C, U),
        case("market-next@2", S, S),
        case("default@1", U, U),  # decided before the experiment: neither arm
        Case("other", None, "market@1", U, (), 0.9, U),  # another tenant: not counted
    ]
    report = ab_report(cases, registry, "market").to_dict()
    control, candidate = report["arms"]["control"], report["arms"]["candidate"]
    assert (control["cases"], candidate["cases"], report["other_cases"]) == (4, 4, 1)
    assert (control["block_rate"], candidate["block_rate"]) == (0.25, 0.75)
    assert (control["review_rate"], candidate["review_rate"]) == (0.5, 0.0)
    assert (control["false_positive_rate"], candidate["false_positive_rate"]) == (0.0, 0.5)
    assert (control["unsafe_recall"], candidate["unsafe_recall"]) == (0.5, 1.0)
    with pytest.raises(NoExperimentError):
        ab_report(cases, registry, "other")


def sample(n: int, policy: str, pred: Verdict, human: Verdict, age_h: int = 1) -> FeedbackSample:
    return FeedbackSample.model_validate(
        {
            "event_id": f"e-{n}",
            "produced_at": NOW - timedelta(hours=age_h),
            "sample_id": f"r-{n}",
            "post_id": f"p-{n}",
            "tenant": "market",
            "text": f"post {n}",
            "content_key": f"{n:032x}",
            "pred_verdict": pred,
            "pred_confidence": 0.9,
            "human_verdict": human,
            "reviewer": "rv-1",
            "policy": policy,
            "model": "tiny",
            "reviewed_at": NOW - timedelta(hours=age_h),
        }
    )


def test_the_ab_report_command_on_a_generated_archive(tmp_path: Path) -> None:
    (tmp_path / "packs").mkdir()
    directory = packs(tmp_path / "packs", PACKS.format(percent=20))
    archive = tmp_path / "feedback"
    # 60 generated reviews: each arm sees the same mix; the candidate blocks controversial.
    mix = [(U, U), (C, S), (C, U), (S, S), (C, S), (S, S)]
    samples = [
        sample(n, policy, *mix[n // 2 % len(mix)])
        for n, policy in enumerate(["market@1", "market-next@2"] * 30)
    ]
    samples.append(sample(999, "market-next@2", C, S, age_h=24 * 30))  # outside --since
    Archive(archive, writer_id="test").append(samples)
    args = ["policy", "ab-report", "--tenant", "market", "--dir", str(directory)]
    done = CliRunner().invoke(app, [*args, "--archive", str(archive), "--json"])
    assert done.exit_code == 0, done.output
    report = orjson.loads(done.stdout)
    control, candidate = report["arms"]["control"], report["arms"]["candidate"]
    assert control["cases"] == candidate["cases"] == 30
    assert control["false_positive_rate"] == 0.0
    assert candidate["false_positive_rate"] == pytest.approx(0.5)  # 10 of 20 safe posts blocked
    assert control["review_rate"] == pytest.approx(0.5)
    assert candidate["block_rate"] == pytest.approx(4 / 6)

    shown = CliRunner().invoke(app, [*args, "--archive", str(archive)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "false-positive rate" in shown.stdout and "50.0%" in shown.stdout

    refused = CliRunner().invoke(
        app,
        [
            "policy",
            "ab-report",
            "--tenant",
            "other",
            "--dir",
            str(directory),
            "--archive",
            str(archive),
        ],
    )
    assert refused.exit_code == 1
