"""The moderation API in the Helm chart: its Deployment, Service and HPA agree with the program
(env names, ports, probes), it reaches the scorer's interactive door through the scorer's
Service, and the NetworkPolicies admit the door from the API's pods only."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from guardstream.runtime.settings import Settings
from tests.unit.deploy.test_deploy import (
    CHART,
    by_kind,
    pod_specs,
    production_values,
    render,
    validate_object,
)

pytestmark = pytest.mark.unit


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = pod_specs(docs)[name]["containers"]
    return dict(found)


def env_of(found: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in found["env"] if "value" in e}


def ports_of(found: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in found["ports"]}


def settings_from(env: dict[str, str]) -> Settings:
    """What the process itself reads from this env (its own parser, not ours)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings(_env_file=None)  # type: ignore[call-arg]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def pod_labels(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    labels: dict[str, str] = by_kind(docs, "Deployment")[name]["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render({})


def test_api_listens_on_every_address_and_calls_the_scorers_door_through_its_service(
    docs: list[dict[str, Any]],
) -> None:
    api = container(docs, "gs-api")
    assert api["args"] == ["api"]
    env = env_of(api)
    settings = settings_from(env)
    assert settings.api.host == "0.0.0.0"
    assert ports_of(api)["http"] == settings.api.port
    # Probes on the health port the process serves (not the API's own port).
    assert ports_of(api)["health"] == settings.process.health_port != settings.api.port
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # The URL names the scorer's Service and its `interactive` port ...
    scorer_service = by_kind(docs, "Service")["gs-scorer"]
    door = {p["name"]: p for p in scorer_service["spec"]["ports"]}["interactive"]
    assert settings.api.scorer_url == f"http://gs-scorer:{door['port']}"
    # ... which reaches the container port the scorer's door listens on, on every address.
    scorer = container(docs, "gs-scorer")
    scorer_settings = settings_from(env_of(scorer))
    assert door["targetPort"] == "interactive"
    assert ports_of(scorer)["interactive"] == scorer_settings.scorer.interactive_port > 0
    assert scorer_settings.scorer.interactive_host == "0.0.0.0"
    assert matches(scorer_service["spec"]["selector"], pod_labels(docs, "gs-scorer"))
    # The API also reads the database URL from the existing Secret, never a literal.
    secrets = {e["name"]: e for e in api["env"] if "valueFrom" in e}
    assert secrets["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "guardstream-postgresql"


def test_api_service_selects_the_api_pods_on_their_http_port(docs: list[dict[str, Any]]) -> None:
    service = by_kind(docs, "Service")["gs-api"]["spec"]
    assert matches(service["selector"], pod_labels(docs, "gs-api"))
    assert not matches(service["selector"], pod_labels(docs, "gs-scorer"))
    ports = {p["name"]: p for p in service["ports"]}
    assert ports["http"] == {"name": "http", "port": 80, "targetPort": "http"}
    assert ports["metrics"]["targetPort"] == "metrics"
    assert by_kind(docs, "PodDisruptionBudget")["gs-api"]["spec"]["maxUnavailable"] == 1


def test_api_replicas_are_fixed_unless_the_hpa_scales_them_on_cpu(
    docs: list[dict[str, Any]],
) -> None:
    assert by_kind(docs, "Deployment")["gs-api"]["spec"]["replicas"] == 2
    assert "gs-api" not in by_kind(docs, "HorizontalPodAutoscaler")
    hpa_values = {"enabled": True, "minReplicas": 3, "maxReplicas": 9}
    scaled = render({"api": {"hpa": {**hpa_values, "targetCPUUtilizationPercentage": 55}}})
    assert "replicas" not in by_kind(scaled, "Deployment")["gs-api"]["spec"]
    hpa = by_kind(scaled, "HorizontalPodAutoscaler")["gs-api"]
    validate_object(hpa)
    spec = hpa["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gs-api"}
    assert spec["scaleTargetRef"] == target
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 9)
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 55


def ingress_ports(policy: dict[str, Any]) -> set[object]:
    return {p["port"] for rule in policy["spec"].get("ingress", []) for p in rule["ports"]}


@pytest.mark.parametrize("profile", ["default", "production"])
def test_only_the_api_pods_reach_the_scorers_interactive_door(profile: str) -> None:
    docs = render({} if profile == "default" else production_values())
    policies = by_kind(docs, "NetworkPolicy")
    api_labels, scorer_labels = pod_labels(docs, "gs-api"), pod_labels(docs, "gs-scorer")
    door = ports_of(container(docs, "gs-scorer"))["interactive"]
    # Every policy that selects the scorer pods and opens the door admits the API pods only.
    opening = {
        name: policy
        for name, policy in policies.items()
        if matches(policy["spec"]["podSelector"]["matchLabels"], scorer_labels)
        and ingress_ports(policy) & {"interactive", door}
    }
    assert set(opening) == {"gs-scorer-interactive"}
    (rule,) = opening["gs-scorer-interactive"]["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert matches(peer["podSelector"]["matchLabels"], api_labels)
    assert not matches(peer["podSelector"]["matchLabels"], scorer_labels)
    # The API's port is open on the API's pods (from `apiFrom`; default: anywhere).
    api_policy = policies["gs-api"]["spec"]
    assert matches(api_policy["podSelector"]["matchLabels"], api_labels)
    assert not matches(api_policy["podSelector"]["matchLabels"], scorer_labels)
    (api_rule,) = api_policy["ingress"]
    assert api_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    if profile == "default":
        assert "from" not in api_rule
        assert api_policy["policyTypes"] == ["Ingress"]  # egress unrestricted
    else:
        assert api_rule["from"] == production_values()["networkPolicy"]["apiFrom"]


def test_with_egress_restricted_the_api_reaches_scorer_kafka_redis_and_postgresql() -> None:
    values = production_values()
    docs = render(values)
    policies = by_kind(docs, "NetworkPolicy")
    api_labels, scorer_labels = pod_labels(docs, "gs-api"), pod_labels(docs, "gs-scorer")
    door = ports_of(container(docs, "gs-scorer"))["interactive"]
    egress: list[dict[str, Any]] = []
    for policy in policies.values():
        spec = policy["spec"]
        if matches(spec["podSelector"]["matchLabels"], api_labels):
            assert "Egress" in spec["policyTypes"]
            egress.extend(spec.get("egress", []))
    allowed_ports = {p["port"] for rule in egress for p in rule.get("ports", [])}
    assert {53, 9093, 6379, 5432, door} <= allowed_ports  # DNS, Kafka, Redis, PostgreSQL, door
    (to_door,) = [r for r in egress if {p["port"] for p in r["ports"]} == {door}]
    (peer,) = to_door["to"]
    assert matches(peer["podSelector"]["matchLabels"], scorer_labels)
    # The scorer pods get no egress to the API's pods from it (only the API's policy has it).
    scorer_egress = [
        rule
        for policy in policies.values()
        if matches(policy["spec"]["podSelector"]["matchLabels"], scorer_labels)
        for rule in policy["spec"].get("egress", [])
    ]
    assert all("podSelector" not in peer for rule in scorer_egress for peer in rule.get("to", []))


def test_api_without_the_scorers_door_is_refused_with_a_reason() -> None:
    with pytest.raises(helm.HelmError, match=r"scorer\.interactivePort > 0"):
        render({"scorer": {"interactivePort": 0}})
    docs = render({"api": {"enabled": False}, "scorer": {"interactivePort": 0}})
    assert not {n for n in pod_specs(docs) if "api" in n}
    assert "GUARDSTREAM_SCORER_INTERACTIVE_PORT" not in env_of(container(docs, "gs-scorer"))
    assert "gs-scorer-interactive" not in by_kind(docs, "NetworkPolicy")
    scorer_ports = by_kind(docs, "Service")["gs-scorer"]["spec"]["ports"]
    assert [p["name"] for p in scorer_ports] == ["metrics"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"port": 0}}, "at '/api/port'"),
        ({"api": {"hpa": {"enabled": True, "maxReplicas": 0}}}, "at '/api/hpa/maxReplicas'"),
        ({"api": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"scorer": {"interactivePort": 70000}}, "at '/scorer/interactivePort'"),
        ({"api": {"deadlineSeconds": 0}}, "at '/api/deadlineSeconds'"),
    ],
)
def test_values_schema_refuses_bad_api_values(values: dict[str, Any], message: str) -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert message in str(refused.value)
    with pytest.raises(helm.HelmError):
        render(values)
