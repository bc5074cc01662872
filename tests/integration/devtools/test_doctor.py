"""`guardstream doctor` against real parts: the test broker, Redis, PostgreSQL and the tiny model.

Every bad configuration is built for real (a topic missing or created with the wrong partition
count in the test's namespace, a closed port, a broken pack file, a model path that does not
exist) and must come out as FAIL with a hint, while the healthy one passes.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from guardstream.contracts.topics import CATALOGUE, Topic, TopicNames
from guardstream.devtools.doctor import Finding, Status, diagnose, healthy
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.runtime.kafka import client_kwargs, ensure_topics
from guardstream.runtime.settings import Settings
from tests.conftest import free_port, missing, wait_for_port
from tests.support.processes import env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def healthy_settings(settings: Settings) -> Settings:
    ensure_tiny_checkpoint(settings.model.cache_dir)
    # The API and its scorer door are not running here (warnings): on ports nobody else holds.
    return settings.replace(
        database={"url": DATABASE_URL},
        api={"port": free_port(), "scorer_url": f"http://127.0.0.1:{free_port()}"},
    )


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    found = [f for f in findings if f.check == check]
    assert found, f"no {check} finding in {findings}"
    return found


def only(findings: list[Finding], check: str) -> Finding:
    (finding,) = by_check(findings, check)
    return finding


async def test_a_healthy_deployment_passes_every_check(healthy_settings: Settings) -> None:
    await ensure_topics(healthy_settings)
    findings = await diagnose(healthy_settings)
    assert healthy(findings), findings
    for check in ("broker", "topics", "model", "policy"):
        assert only(findings, check).status is Status.OK, findings
    pg = only(findings, "postgresql")
    assert pg.status is Status.OK and "reachable" in pg.detail, pg
    # Redis may be slow on a busy machine (warn), never failing.
    assert "reachable and writable" in only(findings, "redis").detail
    assert healthy_settings.kafka.bootstrap in only(findings, "broker").detail
    assert "default@1" in only(findings, "policy").detail


async def test_a_missing_topic_fails_and_says_what_to_run(healthy_settings: Settings) -> None:
    names = TopicNames(healthy_settings.namespace)
    await ensure_topics(healthy_settings, [s.topic for s in CATALOGUE if s.topic is not Topic.DLQ])
    findings = await diagnose(healthy_settings)
    topics = only(findings, "topics")
    assert topics.status is Status.FAIL
    assert names[Topic.DLQ] in topics.detail and names[Topic.POSTS] not in topics.detail
    assert f"GUARDSTREAM_NAMESPACE={healthy_settings.namespace} guardstream topics create" in (
        topics.hint
    )
    assert not healthy(findings)
    # Doctor reports a missing topic; it never creates it (no metadata request names it).
    findings = await diagnose(healthy_settings)
    assert only(findings, "topics").status is Status.FAIL


async def test_a_wrong_partition_count_fails_naming_the_topic(healthy_settings: Settings) -> None:
    names = TopicNames(healthy_settings.namespace)
    admin = AIOKafkaAdminClient(**client_kwargs(healthy_settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names[Topic.POSTS], 4, 1)])
    finally:
        await admin.close()
    await ensure_topics(healthy_settings)
    topics = only(await diagnose(healthy_settings), "topics")
    assert topics.status is Status.FAIL
    assert f"{names[Topic.POSTS]} has 4 partitions, the catalogue says 12" in topics.detail
    assert f"--topic {names[Topic.POSTS]} --partitions 12" in topics.hint


async def test_under_replicated_topics_are_a_warning(healthy_settings: Settings) -> None:
    await ensure_topics(healthy_settings)  # one replica each: a single test broker
    wants_three = healthy_settings.replace(kafka={"topic_replication": 3})
    (topics,) = by_check(await diagnose(wants_three), "topics")
    assert topics.status is Status.WARN
    assert "GUARDSTREAM_TOPIC_REPLICATION=3" in topics.detail
    assert TopicNames(healthy_settings.namespace)[Topic.POSTS] in topics.detail


async def test_an_unreachable_redis_fails(healthy_settings: Settings) -> None:
    port = free_port()
    bad = healthy_settings.replace(redis={"url": f"redis://127.0.0.1:{port}/0"})
    redis = only(await diagnose(bad), "redis")
    assert redis.status is Status.FAIL
    assert f"127.0.0.1:{port}" in redis.detail and "not reachable" in redis.detail
    assert "REDIS_URL" in redis.hint


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start redis-server instances of our own (for states the shared Redis must not be put
    in); yields a starter returning the URL; stops them all at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        if shutil.which("redis-server") is None:
            missing("redis-server is not installed")
        port = free_port()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(tmp_path), *args]
        started.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        assert wait_for_port(port), "redis-server did not start"
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_read_only_redis_fails_as_not_writable(
    healthy_settings: Settings, private_redis: Callable[..., str]
) -> None:
    # A replica whose primary is gone still answers, and refuses every write.
    url = private_redis("--replicaof", "127.0.0.1", str(free_port()))
    redis = only(await diagnose(healthy_settings.replace(redis={"url": url})), "redis")
    assert redis.status is Status.FAIL and "not writable" in redis.detail
    assert "replica" in redis.hint


async def test_a_redis_slower_than_the_cache_timeout_fails(
    healthy_settings: Settings, private_redis: Callable[..., str]
) -> None:
    url = private_redis("--enable-debug-command", "local")
    fast = only(await diagnose(healthy_settings.replace(redis={"url": url})), "redis")
    assert fast.status is not Status.FAIL, fast  # the same server, before it is made slow
    blocker = await asyncio.create_subprocess_exec(
        "redis-cli", "-u", url, "DEBUG", "SLEEP", "3", stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await asyncio.sleep(0.3)  # the server is now busy for ~3 s
        redis = only(await diagnose(healthy_settings.replace(redis={"url": url})), "redis")
    finally:
        await blocker.wait()
    assert redis.status is Status.FAIL
    assert "no answer within GUARDSTREAM_CACHE_TIMEOUT_MS=200 ms" in redis.detail


async def test_an_unreachable_broker_fails(healthy_settings: Settings) -> None:
    port = free_port()
    bad = healthy_settings.replace(kafka={"bootstrap": f"127.0.0.1:{port}"})
    findings = await diagnose(bad)
    broker = only(findings, "broker")
    assert broker.status is Status.FAIL and "not reachable" in broker.detail
    assert "KAFKA_BOOTSTRAP" in broker.hint
    topics = only(findings, "topics")
    assert topics.status is Status.WARN and "not checked" in topics.detail


async def test_postgres_missing_database_and_closed_port_fail(healthy_settings: Settings) -> None:
    missing_db = healthy_settings.replace(
        database={"url": "postgresql://postgres@127.0.0.1:5432/gs_doctor_no_such_db"}
    )
    pg = only(await diagnose(missing_db), "postgresql")
    assert pg.status is Status.FAIL and "does not exist" in pg.detail
    assert "createdb" in pg.hint

    closed = healthy_settings.replace(
        database={"url": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}
    )
    pg = only(await diagnose(closed), "postgresql")
    assert pg.status is Status.FAIL and "not reachable" in pg.detail


async def test_an_invalid_policy_dir_fails_naming_the_file(
    healthy_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "broken.yaml").write_text("id: broken\nversion: 1\nthresholds: [\n")
    bad = healthy_settings.replace(policy={"dir": tmp_path})
    policy = only(await diagnose(bad), "policy")
    assert policy.status is Status.FAIL
    assert "broken.yaml" in policy.detail and "GUARDSTREAM_POLICY_DIR" in policy.hint

    gone = healthy_settings.replace(policy={"dir": tmp_path / "nowhere"})
    policy = only(await diagnose(gone), "policy")
    assert policy.status is Status.FAIL and "not a directory" in policy.detail


async def test_a_nonexistent_model_path_fails(healthy_settings: Settings, tmp_path: Path) -> None:
    bad = healthy_settings.replace(model={"name": str(tmp_path / "no-such-model")})
    model = only(await diagnose(bad), "model")
    assert model.status is Status.FAIL and "no such directory" in model.detail
    assert "GUARDSTREAM_MODEL" in model.hint


async def test_a_hub_id_missing_from_the_local_cache_is_a_warning(
    healthy_settings: Settings,
) -> None:
    hub = healthy_settings.replace(model={"name": "guardstream-tests/no-such-model"})
    model = only(await diagnose(hub), "model")
    assert model.status is Status.WARN and "not in the local Hugging Face cache" in model.detail
    assert "hf download guardstream-tests/no-such-model" in model.hint


async def test_a_model_dir_with_only_a_config_fails(
    healthy_settings: Settings, tmp_path: Path
) -> None:
    tiny = ensure_tiny_checkpoint(healthy_settings.model.cache_dir)
    (tmp_path / "config.json").write_bytes((tiny / "config.json").read_bytes())
    bad = healthy_settings.replace(model={"name": str(tmp_path)})
    model = only(await diagnose(bad), "model")
    # Depending on the transformers version the tokenizer fails to load or loads without the
    # chat template; either way the scorer could not render Qwen3Guard's prompt.
    assert model.status is Status.FAIL and "chat template" in model.detail + model.hint


def run_doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardstream", "doctor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_cli_exit_codes_json_and_no_secrets(healthy_settings: Settings) -> None:
    await ensure_topics(healthy_settings)
    env = env_for(healthy_settings, DATABASE_URL=DATABASE_URL)
    good = run_doctor(env)
    assert good.returncode == 0, good.stdout + good.stderr
    statuses = [line.split()[0] for line in good.stdout.splitlines()[:-1] if line[:1] != " "]
    assert statuses and set(statuses) <= {"ok", "warn"}, good.stdout

    secrets = ("redis-pw-7731", "pg-pw-9912", "sasl-pw-4410")
    bad_env = {
        **env,
        "REDIS_URL": f"redis://guard:{secrets[0]}@127.0.0.1:6379/0",  # Redis has no such user
        "DATABASE_URL": f"postgresql://postgres:{secrets[1]}@127.0.0.1:5432/gs_doctor_no_db",
        "KAFKA_SASL_PASSWORD": secrets[2],  # set but unused (PLAINTEXT): must not leak either
    }
    bad = run_doctor(bad_env, "--json")
    assert bad.returncode == 1
    printed = bad.stdout + bad.stderr
    assert not [s for s in secrets if s in printed], "a secret was printed"
    report = orjson.loads(bad.stdout.strip().splitlines()[-1])
    assert report["ok"] is False
    status = {c["check"]: c for c in report["checks"]}
    assert status["redis"]["status"] == "FAIL"
    assert "authentication rejected" in status["redis"]["detail"]
    assert status["postgresql"]["status"] == "FAIL"
    assert status["broker"]["status"] == status["topics"]["status"] == "ok"
    assert report["settings"]["redis.url"] == "redis://guard:***@127.0.0.1:6379/0"
