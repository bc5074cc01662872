"""The Helm chart agrees with the program and with Kubernetes: it renders and lints with Helm
itself (Go SDK via `helm_python`), its values schema refuses bad values with a clear message,
every rendered object validates against the Kubernetes JSON schemas (`kubernetes_validate`) or,
for KEDA and Prometheus Operator objects, the models generated from their CRDs (`cloudcoil`), and
every command, env name, topic and consumer group it names is one the program has."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel
from typer.main import get_command

from guardstream.cli import app
from guardstream.contracts.topics import Topic, topic_name
from guardstream.policy import load_packs
from guardstream.runtime.settings import Settings, every_setting

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[3]
CHART = ROOT / "deploy" / "helm" / "guardstream"
PRODUCTION = ROOT / "deploy" / "helm" / "examples" / "production-gpu.yaml"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor the chart supports

# Env that libraries read, not guardstream's Settings.
LIBRARY_ENV = {"HOME", "HF_HOME"}
# Custom resources (KEDA, Prometheus Operator): kubernetes_validate has no schema for them; the
# cloudcoil models are generated from the projects' CRD schemas.
CUSTOM_KINDS: dict[str, type[BaseModel]] = {
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
    "ServiceMonitor": ServiceMonitor,
    "PrometheusRule": PrometheusRule,
}


def cli_accepts(args: list[str]) -> bool:
    """True when `guardstream ARGS` names an existing (sub)command, or a group that runs on its
    own (`guardstream review` serves; `guardstream review add-reviewer` is its subcommand)."""
    command: Any = get_command(app)
    for word in args:
        if word.startswith("-"):
            break
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            return not getattr(command, "commands", None)  # a leaf: the rest are its arguments
        command = sub
    return not getattr(command, "commands", None) or bool(command.invoke_without_command)


def settings_env_names() -> set[str]:
    return {name for field in every_setting() for name in field.env}


def validate_object(doc: dict[str, Any]) -> None:
    """Raises when `doc` is not a valid object of its kind (unknown fields included)."""
    model = CUSTOM_KINDS.get(doc["kind"])
    if model is None:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return
    # The models ignore unknown fields: a field lost in the round trip is one the CRD lacks.
    parsed = model.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_unset=True)
    if parsed != doc:
        raise ValueError(f"{doc['kind']} {doc['metadata']['name']}: fields the CRD does not have")


def render(values: dict[str, Any], chart: Path = CHART) -> list[dict[str, Any]]:
    loaded = helm.Chart.load(str(chart))
    docs: list[dict[str, Any]] = []
    for path, text in loaded.render(values, name="gs", namespace="moderation").items():
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION.read_text())
    return values


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template, by its object's name."""
    pods = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            pods[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            pods[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pods


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render({})


@pytest.fixture(scope="module")
def production_docs() -> list[dict[str, Any]]:
    return render(production_values())


@pytest.mark.parametrize("profile", ["default", "production"])
def test_chart_lints_strictly_without_findings(profile: str) -> None:
    values = {} if profile == "default" else production_values()
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_release_runs_every_process_against_external_infrastructure(
    default_docs: list[dict[str, Any]],
) -> None:
    deployments = {"gs-triage", "gs-scorer", "gs-review", "gs-api"}
    assert set(by_kind(default_docs, "Deployment")) == deployments
    assert set(by_kind(default_docs, "StatefulSet")) == {"gs-sla"}
    processes = {"gs-triage", "gs-scorer", "gs-review", "gs-sla", "gs-api"}
    assert set(by_kind(default_docs, "Service")) == processes
    assert set(by_kind(default_docs, "PodDisruptionBudget")) == processes
    assert set(by_kind(default_docs, "CronJob")) == {
        "gs-feedback-train",
        "gs-feedback-qa-sample",
        "gs-maintenance",
    }
    # No broker, cache or database of its own; no CRDs unless asked.
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & (set(CUSTOM_KINDS) | {"Ingress", "HorizontalPodAutoscaler"})
    assert not any("kafka" in n or "redis" in n for n in by_kind(default_docs, "StatefulSet"))


@pytest.mark.parametrize("profile", ["default", "production"])
def test_every_pod_is_probed_resourced_non_root_and_read_only(
    profile: str, default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if profile == "default" else production_docs
    pods = pod_specs(docs)
    long_running = {
        d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }
    assert len(pods) >= 5
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert container["resources"]["requests"]["memory"], name
        assert container["resources"]["limits"]["memory"], name
        assert cli_accepts(container["args"]), (name, container["args"])
        # A read-only root needs a writable /tmp, and HOME pointing there.
        tmp = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"]
        assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[tmp], name
        env = {e["name"]: e for e in container["env"]}
        assert env["HOME"]["value"] == "/tmp"
        assert {"KAFKA_BOOTSTRAP", "REDIS_URL", "GUARDSTREAM_MODEL"} <= set(env), name
        # Processes listen on 127.0.0.1 by default; a pod is probed and scraped from outside.
        assert env["GUARDSTREAM_LISTEN_HOST"]["value"] == "0.0.0.0", name
        assert env["GUARDSTREAM_REVIEW_HOST"]["value"] == "0.0.0.0", name
        if name in long_running:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            probe_port = container["readinessProbe"]["httpGet"]["port"]
            assert probe_port in {p["name"] for p in container["ports"]}, name


def test_secrets_come_only_from_existing_secret_references(
    production_docs: list[dict[str, Any]],
) -> None:
    assert not by_kind(production_docs, "Secret")
    values = production_values()
    secret_env = {"REDIS_URL", "DATABASE_URL", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME"}
    for name, pod in pod_specs(production_docs).items():
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        for key in secret_env & set(env):
            assert "value" not in env[key], (name, key)
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] in {
                values["kafka"]["existingSecret"],
                values["redis"]["existingSecret"],
                values["postgresql"]["existingSecret"],
            }
    review = by_kind(production_docs, "Deployment")["gs-review"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in review["containers"][0]["env"]}
    assert env["GUARDSTREAM_REVIEW_SESSION_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "guardstream-review",
        "key": "session-secret",
    }
    assert "DATABASE_URL" in env
    triage = by_kind(production_docs, "Deployment")["gs-triage"]["spec"]["template"]["spec"]
    assert "DATABASE_URL" not in {e["name"] for e in triage["containers"][0]["env"]}


def test_review_cookies_are_secure_behind_the_trusted_ingress(
    production_docs: list[dict[str, Any]],
) -> None:
    """The console is served over https by the ingress: Secure cookies, the ingress network
    trusted for X-Forwarded-Proto/-For, the claim limit passed on."""
    review = by_kind(production_docs, "Deployment")["gs-review"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in review["containers"][0]["env"]}
    assert env["GUARDSTREAM_REVIEW_COOKIE_SECURE"] == "true"
    assert env["GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS"] == "10.0.0.0/8"
    assert env["GUARDSTREAM_REVIEW_MAX_CLAIMS"] == "1"
    parsed = Settings(
        review={
            "cookie_secure": env["GUARDSTREAM_REVIEW_COOKIE_SECURE"],
            "forwarded_allow_ips": env["GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS"],
            "max_claims": env["GUARDSTREAM_REVIEW_MAX_CLAIMS"],
        }
    )
    assert parsed.review.cookie_secure is True and parsed.review.max_claims == 1


def test_install_notes_name_every_secret_the_pods_read(
    production_docs: list[dict[str, Any]],
) -> None:
    loaded = helm.Chart.load(str(CHART))
    notes = loaded.render(production_values(), name="gs", namespace="moderation")[
        "guardstream/templates/NOTES.txt"
    ]
    secrets = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for pod in pod_specs(production_docs).values()
        for env in pod["containers"][0]["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert len(secrets) == 4
    for secret in secrets:
        assert f"  {secret} (key" in notes, secret
    assert "https://review.moderation.example.com/" in notes


def test_every_env_name_is_a_setting(production_docs: list[dict[str, Any]]) -> None:
    known = settings_env_names() | LIBRARY_ENV
    for name, pod in pod_specs(production_docs).items():
        for env in pod["containers"][0]["env"]:
            assert env["name"] in known, (name, env["name"])


def test_gpu_scorer_has_gpus_placement_model_cache_and_a_long_start_up(
    production_docs: list[dict[str, Any]],
) -> None:
    deployment = by_kind(production_docs, "Deployment")["gs-scorer"]
    pod = deployment["spec"]["template"]["spec"]
    (scorer,) = pod["containers"]
    assert scorer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert scorer["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    startup = scorer["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600
    models = {m["name"]: m["mountPath"] for m in scorer["volumeMounts"]}["models"]
    assert models == "/models"
    env = {e["name"]: e.get("value") for e in scorer["env"]}
    assert env["HF_HOME"].startswith(models)
    volume = {v["name"]: v for v in pod["volumes"]}["models"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert by_kind(production_docs, "PersistentVolumeClaim")[claim]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    # KEDA owns the replica count.
    assert "replicas" not in deployment["spec"]
    # The CUDA build for the scorer only; the CPU-only processes keep the slim image.
    images = {n: p["containers"][0]["image"] for n, p in pod_specs(production_docs).items()}
    assert images["gs-scorer"] == "registry.example.com/guardstream:0.1.0-cuda"
    assert images["gs-feedback-train"] == images["gs-scorer"]
    assert images["gs-triage"] == images["gs-review"] == "registry.example.com/guardstream:0.1.0"


def test_cpu_scorer_asks_for_no_gpu() -> None:
    docs = render({"scorer": {"gpus": 0}, "model": "Qwen/Qwen3Guard-Gen-0.6B"})
    scorer = by_kind(docs, "Deployment")["gs-scorer"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in scorer["resources"]["limits"]
    assert "nvidia.com/gpu" not in scorer["resources"]["requests"]


def test_keda_scales_each_consumer_on_its_own_group_and_input_topic(
    production_docs: list[dict[str, Any]],
) -> None:
    values = production_values()
    settings = Settings(namespace=values["namespace"])
    inputs = {"triage": Topic.POSTS, "scorer": Topic.SCORE_REQUESTS}
    scaled = by_kind(production_docs, "ScaledObject")
    assert set(scaled) == {"gs-triage", "gs-scorer"}
    auth = by_kind(production_docs, "TriggerAuthentication")
    for process, topic in inputs.items():
        spec = scaled[f"gs-{process}"]["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"gs-{process}",
        }
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == settings.group_id(process)
        assert meta["topic"] == topic_name(topic, settings.namespace)
        assert meta["bootstrapServers"] == values["kafka"]["bootstrap"]
        assert meta["sasl"] == "scram_sha512"
        assert meta["tls"] == "enable"
        assert trigger["authenticationRef"]["name"] in auth
        assert spec["maxReplicaCount"] == values[process]["keda"]["maxReplicaCount"]
    # KEDA owns the consumers' HPAs; the only plain one is the API's (CPU, not lag).
    assert set(by_kind(production_docs, "HorizontalPodAutoscaler")) == {"gs-api"}


def test_keda_and_hpa_together_are_refused_with_a_reason() -> None:
    with pytest.raises(helm.HelmError, match=r"keda\.enabled and hpa\.enabled are exclusive"):
        render({"scorer": {"keda": {"enabled": True}, "hpa": {"enabled": True}}})


def test_hpa_alone_scales_on_cpu() -> None:
    docs = render({"triage": {"hpa": {"enabled": True, "maxReplicas": 6}}})
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["gs-triage"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "gs-triage"
    assert hpa["maxReplicas"] == 6
    assert "replicas" not in by_kind(docs, "Deployment")["gs-triage"]["spec"]


def test_review_console_is_served_and_exposed_by_ingress(
    production_docs: list[dict[str, Any]],
) -> None:
    service = by_kind(production_docs, "Service")["gs-review"]
    http = {p["name"]: p for p in service["spec"]["ports"]}["http"]
    review = by_kind(production_docs, "Deployment")["gs-review"]["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in review["containers"][0]["ports"]}
    assert ports[http["targetPort"]] == 8000
    ingress = by_kind(production_docs, "Ingress")["gs-review"]["spec"]
    (rule,) = ingress["rules"]
    assert rule["host"] == "review.moderation.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gs-review", "port": {"name": "http"}}
    assert ingress["tls"] == [{"hosts": [rule["host"]], "secretName": "review-tls"}]


def test_review_body_limit_is_the_same_at_the_ingress_and_in_the_app() -> None:
    """Issue 17: an oversized body stops at the ingress, and at the app behind it."""
    values = {"review": {"maxBodyBytes": 32768, "ingress": {"enabled": True}}}
    docs = render(values)
    annotations = by_kind(docs, "Ingress")["gs-review"]["metadata"]["annotations"]
    assert annotations == {"nginx.ingress.kubernetes.io/proxy-body-size": "32768"}
    review = by_kind(docs, "Deployment")["gs-review"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in review["containers"][0]["env"]}
    assert env["GUARDSTREAM_REVIEW_MAX_BODY_BYTES"] == "32768"
    # An annotation of the operator's own wins; the others are kept beside it.
    values["review"]["ingress"]["annotations"] = {
        "nginx.ingress.kubernetes.io/proxy-body-size": "1m",
        "example.com/team": "trust-and-safety",
    }
    annotations = by_kind(render(values), "Ingress")["gs-review"]["metadata"]["annotations"]
    assert annotations == values["review"]["ingress"]["annotations"]


@pytest.mark.parametrize("kind", ["StatefulSet", "Deployment"])
def test_sla_store_is_a_volume_or_memory_as_chosen(kind: str) -> None:
    docs = render({"sla": {"kind": kind}})
    (sla,) = [d for d in docs if d["metadata"]["name"] == "gs-sla" and d["kind"] == kind]
    container = sla["spec"]["template"]["spec"]["containers"][0]
    data_dir = {e["name"]: e.get("value") for e in container["env"]}["GUARDSTREAM_SLA_DATA_DIR"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["data"] == data_dir
    if kind == "StatefulSet":
        (claim,) = sla["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert sla["spec"]["serviceName"] == "gs-sla"
        assert by_kind(docs, "Service")["gs-sla"]["spec"]["clusterIP"] == "None"
    else:
        volumes = {v["name"]: v for v in sla["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes["data"]


def test_feedback_jobs_are_cronjobs_when_enabled(production_docs: list[dict[str, Any]]) -> None:
    cron = {n: c for n, c in by_kind(production_docs, "CronJob").items() if "feedback" in n}
    assert {n: c["spec"]["schedule"] for n, c in cron.items()} == {
        "gs-feedback-train": "0 3 * * 1",
        "gs-feedback-qa-sample": "0 6 1 * *",
    }
    pods = pod_specs(production_docs)
    assert pods["gs-feedback-train"]["containers"][0]["args"] == ["feedback", "run"]
    assert pods["gs-feedback-qa-sample"]["containers"][0]["args"] == ["feedback", "qa-sample"]
    train = pods["gs-feedback-train"]["containers"][0]["resources"]
    assert train["limits"]["nvidia.com/gpu"] == 1
    assert pods["gs-feedback-train"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    qa = pods["gs-feedback-qa-sample"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in qa["limits"]
    for name in cron:
        assert cron[name]["spec"]["concurrencyPolicy"] == "Forbid"


def test_feedback_run_needs_no_gpu_on_the_tiny_checkpoint() -> None:
    docs = render({"model": "tiny", "feedback": {"jobs": {"train": {"gpus": 0}}}})
    train = pod_specs(docs)["gs-feedback-train"]["containers"][0]
    assert train["args"] == ["feedback", "run"]
    assert "nvidia.com/gpu" not in train["resources"]["limits"]


# The shared directories: env name → (pods that set it, the ones that only read).
SHARED = {
    # The review console and the maintenance job erase (and purge) archive days and mark
    # adapters trained on erased data.
    "GUARDSTREAM_ADAPTER_DIR": (
        {
            "gs-triage",
            "gs-scorer",
            "gs-review",
            "gs-feedback-train",
            "gs-feedback-qa-sample",
            "gs-maintenance",
        },
        {"gs-triage", "gs-scorer"},
    ),
    "GUARDSTREAM_FEEDBACK_DIR": (
        {"gs-review", "gs-feedback-train", "gs-feedback-qa-sample", "gs-maintenance"},
        set(),
    ),
}


def shared_mounts(docs: list[dict[str, Any]], claim: str) -> dict[str, dict[str, str]]:
    """For each pod: shared env name → its path, checked to lie on `claim`'s mount."""
    found: dict[str, dict[str, str]] = {}
    for name, pod in pod_specs(docs).items():
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for env_name, (_, readers) in SHARED.items():
            if env_name not in env:
                continue
            path = env[env_name]
            (mount,) = [
                m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")
            ]
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim, name
            assert mount.get("readOnly", False) == (name in readers), (name, env_name)
            found.setdefault(env_name, {})[name] = path
    return found


@pytest.mark.parametrize("profile", ["default", "production"])
def test_adapter_registry_and_archive_live_on_one_shared_read_write_many_claim(
    profile: str, default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if profile == "default" else production_docs
    claim = by_kind(docs, "PersistentVolumeClaim")["gs-shared"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    found = shared_mounts(docs, "gs-shared")
    assert set(found) == set(SHARED)
    for env_name, (users, _) in SHARED.items():
        assert set(found[env_name]) == users, env_name
        assert len(set(found[env_name].values())) == 1, env_name  # one directory for all
    adapters, archive = found["GUARDSTREAM_ADAPTER_DIR"], found["GUARDSTREAM_FEEDBACK_DIR"]
    assert adapters["gs-triage"] != archive["gs-review"]


def test_shared_storage_may_be_an_existing_claim() -> None:
    docs = render({"sharedStorage": {"existingClaim": "team-nfs", "mountPath": "/shared"}})
    assert "gs-shared" not in by_kind(docs, "PersistentVolumeClaim")
    found = shared_mounts(docs, "team-nfs")
    assert found["GUARDSTREAM_ADAPTER_DIR"]["gs-scorer"] == "/shared/adapters"
    assert found["GUARDSTREAM_FEEDBACK_DIR"]["gs-review"] == "/shared/feedback"


def test_without_shared_storage_there_are_no_adapters_and_no_feedback_jobs() -> None:
    with pytest.raises(helm.HelmError, match=r"feedback\.enabled needs sharedStorage\.enabled"):
        render({"sharedStorage": {"enabled": False}})
    docs = render({"sharedStorage": {"enabled": False}, "feedback": {"enabled": False}})
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert set(by_kind(docs, "CronJob")) == {"gs-maintenance"}  # the databases' retention
    assert shared_mounts(docs, "none") == {}
    with pytest.raises(helm.HelmError, match="must be different directories"):
        render({"sharedStorage": {"adapterDir": "data", "feedbackDir": "data"}})


def test_topics_are_created_before_the_release(default_docs: list[dict[str, Any]]) -> None:
    (job,) = by_kind(default_docs, "Job").values()
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics", "create"]


def test_policy_packs_are_mounted_and_load_with_the_programs_own_loader(
    tmp_path: Path,
) -> None:
    shipped = ROOT / "services" / "guardstream" / "policy" / "packs"
    packs = {p.name: p.read_text() for p in sorted(shipped.glob("*.yaml"))}
    docs = render({"policy": {"packs": packs}})
    config_map = by_kind(docs, "ConfigMap")["gs-policy"]
    assert config_map["data"] == packs  # byte for byte, comments included
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    registry = load_packs(tmp_path)
    assert registry.for_post("health-forum", "CN").id == "health-forum-cn"
    for name, pod in pod_specs(docs).items():
        if name == "gs-topics":
            continue
        container = pod["containers"][0]
        policy_dir = {e["name"]: e.get("value") for e in container["env"]}["GUARDSTREAM_POLICY_DIR"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in pod["volumes"]}[mounts[policy_dir]]
        assert volume["configMap"]["name"] == "gs-policy", name
    # The pods restart when a pack changes.
    before = by_kind(docs, "Deployment")["gs-triage"]["spec"]["template"]["metadata"]
    edited = dict(packs, **{"default.yaml": packs["default.yaml"].replace('"1"', '"2"')})
    after = by_kind(render({"policy": {"packs": edited}}), "Deployment")["gs-triage"]
    assert (
        after["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
        != before["annotations"]["checksum/policy"]
    )


def test_network_policy_admits_only_metrics_and_the_console(
    production_docs: list[dict[str, Any]],
) -> None:
    spec = by_kind(production_docs, "NetworkPolicy")["gs"]["spec"]  # every pod's
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    ports = [rule["ports"][0]["port"] for rule in spec["ingress"]]
    assert ports == ["metrics", 8000]
    assert all(rule.get("from") for rule in spec["ingress"])
    assert spec["egress"][0]["ports"][0]["port"] == 53  # DNS first


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scorer": {"gpus": -1}}, "at '/scorer/gpus': minimum: got -1, want 0"),
        ({"sla": {"kind": "DaemonSet"}}, "at '/sla/kind': value must be one of"),
        ({"kafka": {"bootstrap": "kafka"}}, "at '/kafka/bootstrap': 'kafka' does not match"),
        ({"triage": {"replicass": 3}}, "additional properties 'replicass' not allowed"),
        ({"securityContext": {"runAsNonRoot": False}}, "at '/securityContext/runAsNonRoot'"),
        ({"feedback": {"jobs": {"train": {"schedule": "weekly", "args": ["x"]}}}}, "schedule"),
        ({"namespace": "Prod!"}, "at '/namespace'"),
        ({"sharedStorage": {"adapterDir": "../adapters"}}, "at '/sharedStorage/adapterDir'"),
        ({"sharedStorage": {"mountPath": "shared/"}}, "at '/sharedStorage/mountPath'"),
        ({"sharedStorage": {"size": "lots"}}, "at '/sharedStorage/size'"),
        ({"review": {"forwardedAllowIps": "ingress"}}, "at '/review/forwardedAllowIps'"),
        ({"review": {"maxClaims": 0}}, "at '/review/maxClaims'"),
    ],
)
def test_values_schema_refuses_bad_values_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert message in str(refused.value)
    with pytest.raises(helm.HelmError):
        render(values)


def test_values_schema_accepts_the_shipped_profiles() -> None:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema({})
    chart.validate_schema(production_values())


@pytest.mark.parametrize("profile", ["default", "production"])
def test_every_object_validates_against_the_kubernetes_schemas(
    profile: str, default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if profile == "default" else production_docs
    for doc in docs:
        validate_object(doc)
    assert len(docs) >= 12


def test_the_object_checks_catch_a_wrong_field(production_docs: list[dict[str, Any]]) -> None:
    deployment = json.loads(json.dumps(by_kind(production_docs, "Deployment")["gs-triage"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment)
    scaled = json.loads(json.dumps(by_kind(production_docs, "ScaledObject")["gs-scorer"]))
    scaled["spec"]["maxReplicas"] = 4
    with pytest.raises(ValueError, match="fields the CRD does not have"):
        validate_object(scaled)
    monitor = json.loads(json.dumps(by_kind(production_docs, "ServiceMonitor")["gs-scorer"]))
    monitor["spec"]["endpoints"][0]["interval"] = 30
    with pytest.raises(ValueError, match="interval"):
        validate_object(monitor)


# --- monitoring: the observability work's files ship with the chart ------------------------

SOURCES = {
    "files/rules.yml": ROOT / "deploy" / "prometheus" / "rules.yml",
    "files/dashboards": ROOT / "deploy" / "grafana" / "dashboards",
}


def shipped_monitoring(docs: list[dict[str, Any]]) -> tuple[dict[str, str], list[Any]]:
    dashboards = {}
    for name, config_map in by_kind(docs, "ConfigMap").items():
        if name.startswith("gs-dashboard-"):
            assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
            dashboards.update(config_map["data"])
    rules = by_kind(docs, "PrometheusRule").values()
    groups = [group for rule in rules for group in rule["spec"]["groups"]]
    return dashboards, groups


def monitoring_values() -> dict[str, Any]:
    return {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}


def test_chart_ships_every_dashboard_and_rule_file_it_holds() -> None:
    docs = render(monitoring_values())
    dashboards, groups = shipped_monitoring(docs)
    files = {p.name: p.read_text() for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert dashboards == files
    rules = CHART / "files" / "rules.yml"
    expected = yaml.safe_load(rules.read_text())["groups"] if rules.exists() else []
    assert groups == expected
    monitors = by_kind(docs, "ServiceMonitor")
    assert set(monitors) == {"gs-triage", "gs-scorer", "gs-review", "gs-sla", "gs-api"}
    services = by_kind(docs, "Service")
    for name, monitor in monitors.items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        labels = services[name]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert monitor["spec"]["endpoints"][0]["port"] in {
            p["name"] for p in services[name]["spec"]["ports"]
        }


def test_monitoring_templates_ship_files_dropped_into_the_chart(tmp_path: Path) -> None:
    chart = tmp_path / "guardstream"
    shutil.copytree(CHART, chart)
    dashboard = {"title": "guardstream triage", "panels": [{"type": "timeseries"}]}
    (chart / "files" / "dashboards").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "dashboards" / "triage_overview.json").write_text(json.dumps(dashboard))
    rules = {
        "groups": [
            {
                "name": "guardstream",
                "rules": [{"alert": "ConsumerLagHigh", "expr": "lag > 1000", "for": "10m"}],
            }
        ]
    }
    (chart / "files" / "rules.yml").write_text(yaml.safe_dump(rules))
    docs = render(monitoring_values(), chart=chart)
    for doc in docs:
        validate_object(doc)
    dashboards, groups = shipped_monitoring(docs)
    assert json.loads(dashboards["triage_overview.json"]) == dashboard
    assert "gs-dashboard-triage-overview" in by_kind(docs, "ConfigMap")
    assert groups == rules["groups"]
    # Switched off: nothing of it renders.
    off = {"metrics": {"dashboards": {"enabled": False}, "prometheusRule": {"enabled": False}}}
    assert shipped_monitoring(render(off, chart=chart)) == ({}, [])


def test_chart_copies_of_dashboards_and_rules_equal_their_sources() -> None:
    """`make chart-sync` keeps files/ equal to deploy/prometheus and deploy/grafana."""
    rules_copy, rules_source = CHART / "files" / "rules.yml", SOURCES["files/rules.yml"]
    assert rules_copy.exists() == rules_source.exists(), "run `make chart-sync`"
    if rules_source.exists():
        assert filecmp.cmp(rules_copy, rules_source, shallow=False), "run `make chart-sync`"
    copies = {p.name for p in (CHART / "files" / "dashboards").glob("*.json")}
    sources = {p.name for p in SOURCES["files/dashboards"].glob("*.json")}
    assert copies == sources, "run `make chart-sync`"
    for name in sources:
        assert filecmp.cmp(
            CHART / "files" / "dashboards" / name,
            SOURCES["files/dashboards"] / name,
            shallow=False,
        ), f"{name}: run `make chart-sync`"


def test_cli_accepts_is_not_a_rubber_stamp() -> None:
    assert not cli_accepts(["no-such-command"])
    assert not cli_accepts(["topics"])  # a group, not a command
    assert cli_accepts(["topics", "create"])
    assert not cli_accepts(["scorers"])
    assert cli_accepts(["feedback", "run"]) and cli_accepts(["review"]) and cli_accepts(["sla"])
    assert cli_accepts(["review", "add-reviewer"]) and not cli_accepts(["review", "serve"])
    assert not cli_accepts(["feedback", "qa-samples"])


def test_dlq_payload_settings_reach_every_pod_with_the_settings_defaults(
    production_docs: list[dict[str, Any]],
) -> None:
    defaults = Settings(_env_file=None).kafka  # type: ignore[call-arg]
    expected = {
        "GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES": str(defaults.dlq_payload_max_bytes),
        "GUARDSTREAM_DLQ_REDACT": str(defaults.dlq_redact).lower(),
    }
    for name, pod in pod_specs(production_docs).items():
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert {k: env.get(k) for k in expected} == expected, name
    docs = render({"dlq": {"payloadMaxBytes": 4096, "redact": True}})
    for pod in pod_specs(docs).values():
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert (env["GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES"], env["GUARDSTREAM_DLQ_REDACT"]) == (
            "4096",
            "true",
        )
