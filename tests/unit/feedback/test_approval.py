"""Checks and balances, promotion: a candidate that passed the shadow gate waits for a
recorded human approval (`guardstream feedback approve RUN --by ID`, through the real adapter
registry on disk) unless the deployment opts into automatic promotion."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli.feedback import app
from guardstream.contracts.events import Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.feedback.job import evaluate_shadow
from guardstream.feedback.report import read_cards
from guardstream.feedback.shadow import ShadowConfig
from guardstream.model.adapters import AdapterError
from tests.unit.feedback.test_shadow import label, record, shadowed_registry

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE
GATE = ShadowConfig(min_samples=3, min_labelled=2, reviewer_cap=1.0)


def agreed(n: int, verdict: Verdict) -> list[FeedbackSample]:
    """Two reviewers' same label of post n: truth fit to judge by."""
    return [label(n, verdict), label(n, verdict, minutes=1, reviewer="rv-2")]


def approve_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {
        "GUARDSTREAM_ADAPTER_DIR": str(tmp_path / "adapters"),
        "GUARDSTREAM_FEEDBACK_DIR": str(tmp_path / "feedback"),
    }
    result = CliRunner().invoke(app, ["approve", *args], env=env)
    return result.exit_code, result.output


def test_a_passing_candidate_waits_for_a_recorded_approval_then_serves(tmp_path: Path) -> None:
    archive, registry = shadowed_registry(tmp_path)
    archive.append([*agreed(1, S), *agreed(2, S)])
    records = [record(1, C, S), record(2, C, S), record(3, U, U)]
    now = datetime.now(UTC)

    report = evaluate_shadow(archive, registry, records, now, GATE)
    assert report.status == "awaiting_approval", report
    assert "feedback approve cand --by" in report.detail
    snapshot = registry.snapshot(fresh=True)
    assert snapshot.serving_for("acme") is None  # passed, but nobody approved it
    assert snapshot.shadow == {"*": "cand"}  # keeps shadowing meanwhile
    again = evaluate_shadow(archive, registry, records, now, GATE)
    assert again.status == "awaiting_approval"
    assert registry.snapshot(fresh=True).serving_for("acme") is None

    code, output = approve_cli(tmp_path, "cand", "--by", "senior-7")
    assert code == 0, output
    done = json.loads(output)
    assert (done["adapter"], done["by"], done["promoted"]) == ("cand", "senior-7", True)
    serving = registry.snapshot(fresh=True).serving_for("acme")
    assert serving is not None
    assert serving.adapter_id == "cand"
    approvals = [h for h in registry.history() if "approved" in h]
    assert [(h["approved"], h["by"]) for h in approvals] == [("cand", "senior-7")]
    (card,) = read_cards(archive.root)  # the run's model card shows it too
    assert card["approval"]["by"] == "senior-7"
    assert (card["promoted"], card["awaiting_approval"]) == (True, False)


def test_an_approval_before_the_gate_lets_the_gate_promote(tmp_path: Path) -> None:
    archive, registry = shadowed_registry(tmp_path)
    code, output = approve_cli(tmp_path, "cand", "--by", "lead")
    assert code == 0, output
    assert json.loads(output)["promoted"] is False  # no shadow evidence yet
    assert registry.snapshot(fresh=True).serving_for("acme") is None
    archive.append([*agreed(1, S), *agreed(2, S)])
    records = [record(1, C, S), record(2, C, S), record(3, U, U)]
    report = evaluate_shadow(archive, registry, records, datetime.now(UTC), GATE)
    assert report.status == "promote", report
    serving = registry.snapshot(fresh=True).serving_for("acme")
    assert serving is not None
    assert serving.adapter_id == "cand"


def test_automatic_promotion_is_a_deployment_opt_in(tmp_path: Path) -> None:
    archive, registry = shadowed_registry(tmp_path)
    archive.append([*agreed(1, S), *agreed(2, S)])
    records = [record(1, C, S), record(2, C, S), record(3, U, U)]
    auto = ShadowConfig(min_samples=3, min_labelled=2, require_approval=False, reviewer_cap=1.0)
    report = evaluate_shadow(archive, registry, records, datetime.now(UTC), auto)
    assert report.status == "promote"
    assert registry.history()[-1]["serving"] == "cand"
    assert not [h for h in registry.history() if "approved" in h]


def test_approving_an_unknown_run_or_with_a_bad_id_says_so(tmp_path: Path) -> None:
    shadowed_registry(tmp_path)
    code, output = approve_cli(tmp_path, "fb-nope", "--by", "lead")
    assert code == 1
    assert "no adapter 'fb-nope'" in output
    code, output = approve_cli(tmp_path, "cand", "--by", "a\x00b")
    assert code == 1
    assert "approver id" in output


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(run=st.text(max_size=80), by=st.text(max_size=200))
@example(run="cand", by="")
@example(run="cand", by="a\x00b")
@example(run="cand", by="\ud800")
@example(run="cand", by="x" * 129)
@example(run="../cand", by="lead")
@example(run="cand\x00", by="lead")
def test_hostile_approvals_are_refused_with_a_message_and_change_nothing(
    tmp_path_factory: pytest.TempPathFactory, run: str, by: str
) -> None:
    tmp_path = tmp_path_factory.mktemp("hostile")
    _, registry = shadowed_registry(tmp_path)
    before = registry.history()
    try:
        record_ = registry.approve(run, by)
    except AdapterError as exc:
        assert str(exc)
        assert registry.history() == before
        assert "approval" not in registry.card("cand")
    else:
        assert (run, record_["by"]) == ("cand", by)
        assert registry.history()[-1]["approved"] == "cand"


def test_an_approval_promotes_only_on_the_latest_evaluations_pass(tmp_path: Path) -> None:
    archive, registry = shadowed_registry(tmp_path)
    archive.append([*agreed(1, S), *agreed(2, S)])
    records = [record(1, C, S), record(2, C, S), record(3, U, U)]
    passed = evaluate_shadow(archive, registry, records, datetime.now(UTC), GATE)
    assert passed.status == "awaiting_approval"
    # The next evaluation sees less evidence (records after a rollback are stale): it keeps
    # shadowing, and an approval given now waits for the next pass.
    later = evaluate_shadow(archive, registry, records[:1], datetime.now(UTC), GATE)
    assert later.status == "keep"
    code, output = approve_cli(tmp_path, "cand", "--by", "lead")
    assert code == 0, output
    assert json.loads(output)["promoted"] is False
    assert registry.snapshot(fresh=True).serving_for("acme") is None
