"""The shipped deployment files agree with the program: the Helm chart renders and lints with
Helm itself, and every command they run is one the `guardstream` CLI has."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from guardstream.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "guardstream"


def cli_accepts(args: list[str]) -> bool:
    """True when `guardstream ARGS` names an existing (sub)command."""
    command: Any = get_command(app)
    for word in args:
        if word.startswith("-"):
            break
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            return not getattr(command, "commands", None)  # a leaf: the rest are its arguments
        command = sub
    return not getattr(command, "commands", None)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    helm = pytest.importorskip("helm_python")
    chart = helm.Chart.load(str(CHART))
    docs = []
    for text in chart.render({}, name="gs", namespace="moderation").values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def test_chart_lints_without_errors() -> None:
    helm = pytest.importorskip("helm_python")
    assert helm.lint(str(CHART))["errors"] == []


def test_workloads_are_probed_resourced_and_non_root(rendered: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    assert set(deployments) == {"gs-triage", "gs-scorer"}
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert cli_accepts(container["args"])
        env = {e["name"] for e in container["env"]}
        assert {"KAFKA_BOOTSTRAP", "REDIS_URL", "GUARDSTREAM_MODEL"} <= env
    scorer = deployments["gs-scorer"]["spec"]["template"]["spec"]["containers"][0]
    assert scorer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        scorer["startupProbe"]["failureThreshold"] * scorer["startupProbe"]["periodSeconds"] >= 600
    )


def test_topics_are_created_before_the_release(rendered: list[dict[str, Any]]) -> None:
    (job,) = [d for d in rendered if d["kind"] == "Job"]
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics", "create"]


def test_compose_services_run_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("guardstream")
    }
    assert {"topics", "triage", "scorer"} <= set(ours)
    for name, svc in ours.items():
        args = svc.get("command") or svc["entrypoint"][1:]
        assert cli_accepts(args), name
        assert svc["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_cli_accepts_is_not_a_rubber_stamp() -> None:
    assert not cli_accepts(["no-such-command"])
    assert not cli_accepts(["topics"])  # a group, not a command
    assert cli_accepts(["topics", "create"])
