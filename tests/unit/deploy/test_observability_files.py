"""The shipped dashboards and alert rules are well-formed, current with their generator, only
query metrics that exist (or are announced), and the rules fire when they should (promtool)."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess

import pytest

from tests.conftest import missing
from tests.support.observability import (
    DASHBOARDS,
    KNOWN_METRICS,
    LOCAL_SCRAPE_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    SCRAPE_CONFIG,
    expressions,
)

pytestmark = pytest.mark.unit

BOARDS = {
    "overview.json",
    "pipeline.json",
    "scorer.json",
    "review-sla.json",
    "feedback.json",
    "api.json",
}


def test_dashboards_are_generated_from_deploy_grafana_generate_py() -> None:
    generated = runpy.run_path(str(ROOT / "deploy" / "grafana" / "generate.py"))["render"]()
    assert set(generated) == BOARDS
    for name, text in generated.items():
        on_disk = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert on_disk == text, f"{name} is stale: run `python deploy/grafana/generate.py`"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_shape(name: str) -> None:
    board = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    assert board["uid"].startswith("guardstream-") and len(board["uid"]) <= 40
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and ids
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        for target in panel["targets"]:
            used = {v for v in ("$tenant",) if v in target["expr"]}
            assert {u[1:] for u in used} <= variables, (panel["title"], used)


def test_every_expression_queries_known_metrics_only() -> None:
    exprs = expressions()
    assert len([e for e in exprs if e.is_alert]) >= 10
    for expr in exprs:
        assert expr.metrics, f"{expr.where}: no metric in {expr.expr!r}"
        unknown = expr.metrics - KNOWN_METRICS
        assert not unknown, f"{expr.where}: unknown metrics {sorted(unknown)}"


def test_alerts_cover_the_required_conditions() -> None:
    alerts = {e.where.removeprefix("rule ") for e in expressions() if e.is_alert}
    required = {
        "GuardstreamSlaBreach",
        "GuardstreamSlaEarlyWarning",
        "GuardstreamDlqGrowing",
        "GuardstreamConsumerLagHigh",
        "GuardstreamScorerDown",
        "GuardstreamCacheDown",
        "GuardstreamReviewerAgreementLow",
        "GuardstreamApiLatencyHigh",
        "GuardstreamApiErrorRateHigh",
    }
    assert required <= alerts


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        missing("promtool not installed (apt-get install -y prometheus)")
    assert tool is not None
    return tool


def test_promtool_checks_the_rules_and_the_scrape_config() -> None:
    tool = _promtool()
    rules = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    for scrape_config in (SCRAPE_CONFIG, LOCAL_SCRAPE_CONFIG):
        config = subprocess.run(
            [tool, "check", "config", "--syntax-only", str(scrape_config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert config.returncode == 0, config.stdout + config.stderr


def test_alerts_fire_when_they_should_promtool_test_rules() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
