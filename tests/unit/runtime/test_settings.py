import tempfile
from pathlib import Path
from types import NoneType, UnionType
from typing import Literal, Union, get_args, get_origin

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from pydantic_settings import DotEnvSettingsSource

from guardstream.runtime.settings import (
    ENV_FILE_VAR,
    NOT_SETTINGS,
    ReviewSettings,
    SettingField,
    Settings,
    env_file_text,
    every_setting,
    mask_url,
    settings_sources,
    url_secrets,
)
from tests.support.hostile_urls import url_with_secrets

pytestmark = pytest.mark.unit


def test_addresses_come_from_the_documented_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:6379/1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc:s3cret@db/guard")
    monkeypatch.setenv("GUARDSTREAM_MODEL", "Qwen/Qwen3Guard-Gen-8B")
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "staging")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka.bootstrap == "kafka-0:9092,kafka-1:9092"
    assert settings.redis.url.get_secret_value() == "redis://:hunter2@cache:6379/1"
    assert settings.model.name == "Qwen/Qwen3Guard-Gen-8B"
    assert settings.cache_prefix == "gs:staging:"
    assert settings.group_id("triage") == "staging.guardstream-triage"


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:6379/1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc:s3cret@db/guard")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "kafkapass")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    shown = repr(settings) + str(settings.public_view())
    for secret in ("hunter2", "s3cret", "kafkapass"):
        assert secret not in shown
    assert settings.public_view()["database.url"] == "postgresql://svc:***@db/guard"


def test_settings_are_frozen_root_and_sections() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        settings.namespace = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.review = ReviewSettings(max_claims=2)  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.review.max_claims = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.review.edge.max_in_flight = 2  # type: ignore[misc]


def test_invalid_values_are_rejected_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "Not Valid!")
    with pytest.raises(ValidationError, match="namespace"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_review_auth_settings_default_to_the_safe_side(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.review.cookie_secure is True
    assert settings.review.forwarded_allow_ips == "127.0.0.1,::1"
    assert settings.review.max_claims == 1
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.168.1.7,*")  # uvicorn's name
    monkeypatch.setenv("GUARDSTREAM_REVIEW_COOKIE_SECURE", "false")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.review.forwarded_allow_ips == "10.0.0.0/8, 192.168.1.7,*"
    assert settings.review.cookie_secure is False


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS", "ingress-nginx"),
        ("GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS", "10.0.0.0/8,,"),
        ("GUARDSTREAM_REVIEW_MAX_CLAIMS", "0"),
        ("GUARDSTREAM_REVIEW_COOKIE_SECURE", "maybe"),
    ],
)
def test_review_auth_settings_refuse_what_they_cannot_mean(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=r"(?i)review_"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@given(url_with_secrets(("redis", "rediss", "unix", "postgresql", "https")))
def test_mask_url_hides_every_secret_wherever_it_is(example: tuple[str, list[str]]) -> None:
    url, hidden = example
    shown = mask_url(url)
    assert not [s for s in hidden if s in shown], shown
    assert shown.partition("://")[0] == url.partition("://")[0]
    assert mask_url(shown) == shown  # masking a masked URL changes nothing
    # What doctor scrubs from drivers' messages covers each secret.
    assert all(any(s in piece for piece in url_secrets(url)) for s in hidden)


@given(st.text(st.characters(codec="utf-8")))
def test_mask_url_never_raises_and_leaves_non_urls_alone(text: str) -> None:
    shown = mask_url(text)
    if "://" not in text:
        assert shown == text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h/0?password=p%40ss&db=2", "redis://h/0?password=***&db=2"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=k#frag",
            "postgresql://u@h/db?sslmode=require&sslpassword=***#***",
        ),
        ("redis://h/0?token", "redis://h/0?***"),
        ("redis://h/0?password=p@ss", "redis://***"),
        ("rediss://:a/b?c@h:1/0", "rediss://***"),
    ],
)
def test_query_values_and_ambiguous_urls(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_public_view_masks_urls_in_plain_settings_too() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        telemetry={"otlp_endpoint": "https://collector:4318/?api_key=Zq9k"},
        redis={"url": SecretStr("redis://h:6379/0?password=Zq9r")},
    )
    view = str(settings.public_view())
    assert "Zq9" not in view
    assert "https://collector:4318/?api_key=***" in view


# Every env name the flat `Settings` of before the sections accepted (generated once from
# `git show main:services/guardstream/runtime/settings.py`, in its field order): the nested
# sections must read exactly these, each field its own, first name first.
FLAT_ENV_NAMES = [
    ("GUARDSTREAM_NAMESPACE",),
    ("KAFKA_BOOTSTRAP",),
    ("KAFKA_SECURITY_PROTOCOL",),
    ("KAFKA_SASL_MECHANISM",),
    ("KAFKA_SASL_USERNAME",),
    ("KAFKA_SASL_PASSWORD",),
    ("KAFKA_MAX_POLL_INTERVAL_MS",),
    ("KAFKA_FETCH_MAX_WAIT_MS",),
    ("GUARDSTREAM_TOPIC_REPLICATION",),
    ("GUARDSTREAM_KAFKA_MAX_REQUEST_BYTES",),
    ("GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES",),
    ("GUARDSTREAM_DLQ_REDACT",),
    ("REDIS_URL",),
    ("GUARDSTREAM_CACHE_TTL_S",),
    ("GUARDSTREAM_JOURNAL_TTL_S",),
    ("GUARDSTREAM_CACHE_TIMEOUT_MS",),
    ("DATABASE_URL",),
    ("GUARDSTREAM_MODEL",),
    ("GUARDSTREAM_MODEL_CACHE_DIR",),
    ("GUARDSTREAM_MAX_MODEL_LEN",),
    ("GUARDSTREAM_GPU_MEMORY_UTILIZATION",),
    ("GUARDSTREAM_MODEL_DTYPE",),
    ("GUARDSTREAM_MAX_OUTPUT_TOKENS",),
    ("GUARDSTREAM_SCORING_MODE",),
    ("GUARDSTREAM_TWO_PHASE_REFUSAL",),
    ("GUARDSTREAM_ENGINE",),
    ("GUARDSTREAM_PREFIX_CACHING",),
    ("GUARDSTREAM_CASCADE_ESCALATE_BELOW",),
    ("GUARDSTREAM_SCORER_SOURCE",),
    ("GUARDSTREAM_ADAPTER_DIR",),
    ("GUARDSTREAM_ADAPTER_POLL_S",),
    ("GUARDSTREAM_MAX_LORA_RANK",),
    ("GUARDSTREAM_MAX_LORAS",),
    ("GUARDSTREAM_SHADOW_MAX_IN_FLIGHT",),
    ("GUARDSTREAM_SHADOW_SAMPLE_RATE",),
    ("GUARDSTREAM_SCORER_INTERACTIVE_HOST",),
    ("GUARDSTREAM_SCORER_INTERACTIVE_PORT",),
    ("GUARDSTREAM_SCORER_INTERACTIVE_MAX_IN_FLIGHT",),
    ("GUARDSTREAM_API_HOST",),
    ("GUARDSTREAM_API_PORT",),
    ("GUARDSTREAM_API_SCORER_URL",),
    ("GUARDSTREAM_API_DEADLINE_S",),
    ("GUARDSTREAM_API_BATCH_MAX",),
    ("GUARDSTREAM_API_MAX_BODY_BYTES",),
    ("GUARDSTREAM_API_RETRY_AFTER_S",),
    ("GUARDSTREAM_API_DB_POOL_MAX",),
    ("GUARDSTREAM_API_AUTH",),
    ("GUARDSTREAM_API_KEY_RATE_PER_S",),
    ("GUARDSTREAM_API_KEY_BURST",),
    ("GUARDSTREAM_API_KEY_CACHE_S",),
    ("GUARDSTREAM_POLICY_DIR",),
    ("GUARDSTREAM_POLICY_POLL_S",),
    ("GUARDSTREAM_NEAR_DUPLICATES",),
    ("GUARDSTREAM_TRIAGE_BATCH_MAX",),
    ("GUARDSTREAM_SCORER_BATCH_MAX",),
    ("GUARDSTREAM_TRIAGE_MAX_IN_FLIGHT",),
    ("GUARDSTREAM_SCORER_MAX_IN_FLIGHT",),
    ("GUARDSTREAM_SHUTDOWN_DRAIN_S",),
    ("GUARDSTREAM_POLL_TIMEOUT_MS",),
    ("GUARDSTREAM_COMMIT_INTERVAL_MS",),
    ("GUARDSTREAM_RETRY_BACKOFF_MAX_S",),
    ("GUARDSTREAM_MAX_TEXT_CHARS",),
    ("GUARDSTREAM_HEALTH_PORT",),
    ("GUARDSTREAM_LISTEN_HOST",),
    ("GUARDSTREAM_FAULT",),
    ("GUARDSTREAM_LOG_LEVEL",),
    ("GUARDSTREAM_SCORER_UNAVAILABLE_AFTER_S",),
    ("GUARDSTREAM_HUMAN_VERDICT_TTL_S",),
    ("GUARDSTREAM_REVIEW_HOST",),
    ("GUARDSTREAM_REVIEW_PORT",),
    ("GUARDSTREAM_REVIEW_DB_SCHEMA",),
    ("GUARDSTREAM_REVIEW_DB_POOL_MAX",),
    ("GUARDSTREAM_REVIEW_SESSION_SECRET",),
    ("GUARDSTREAM_REVIEW_SESSION_TTL_S",),
    ("GUARDSTREAM_REVIEW_TOKEN_TTL_S",),
    ("GUARDSTREAM_REVIEW_COOKIE_SECURE",),
    ("GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"),
    ("GUARDSTREAM_REVIEW_MAX_CLAIMS",),
    ("GUARDSTREAM_REVIEW_LOCK_S",),
    ("GUARDSTREAM_REVIEW_ASSIGN_INTERVAL_S",),
    ("GUARDSTREAM_REVIEW_TAGS",),
    ("GUARDSTREAM_REVIEW_POST_TEXT_TTL_S",),
    ("GUARDSTREAM_REVIEW_BATCH_MAX",),
    ("GUARDSTREAM_REVIEW_MAX_BODY_BYTES",),
    ("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT",),
    ("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT_ANONYMOUS",),
    ("GUARDSTREAM_REVIEW_MAX_CONNECTIONS",),
    ("GUARDSTREAM_REVIEW_HASH_WORKERS",),
    ("GUARDSTREAM_REVIEW_HASH_QUEUE",),
    ("GUARDSTREAM_REVIEW_LOGIN_PER_ID_PER_MIN",),
    ("GUARDSTREAM_REVIEW_LOGIN_PER_ADDRESS_PER_MIN",),
    ("GUARDSTREAM_REVIEW_LOGIN_THROTTLE_KEYS",),
    ("GUARDSTREAM_REVIEW_DENIED_AUDIT_PER_S",),
    ("GUARDSTREAM_FEEDBACK_DIR",),
    ("GUARDSTREAM_FEEDBACK_MIN_SAMPLES",),
    ("GUARDSTREAM_FEEDBACK_CONFIDENCE_BELOW",),
    ("GUARDSTREAM_FEEDBACK_EXPERT_TERMS",),
    ("GUARDSTREAM_FEEDBACK_ANCHOR_RATIO",),
    ("GUARDSTREAM_FEEDBACK_PRESCREEN_MODEL",),
    ("GUARDSTREAM_FEEDBACK_PROMOTION_MARGIN",),
    ("GUARDSTREAM_FEEDBACK_SHADOW_MIN_SAMPLES",),
    ("GUARDSTREAM_FEEDBACK_SHADOW_MIN_LABELLED",),
    ("GUARDSTREAM_FEEDBACK_SHADOW_FPR_TOLERANCE",),
    ("GUARDSTREAM_FEEDBACK_SHADOW_WINDOW_DAYS",),
    ("GUARDSTREAM_FEEDBACK_SHARED_POOL",),
    ("GUARDSTREAM_FEEDBACK_MIN_JUDGES",),
    ("GUARDSTREAM_FEEDBACK_REVIEWER_CAP",),
    ("GUARDSTREAM_FEEDBACK_AUTO_PROMOTE",),
    ("GUARDSTREAM_FEEDBACK_TRAIN_STEPS",),
    ("GUARDSTREAM_FEEDBACK_LEARNING_RATE",),
    ("GUARDSTREAM_FEEDBACK_TRAIN_REASONS",),
    ("GUARDSTREAM_QA_AGREEMENT_MIN",),
    ("GUARDSTREAM_QA_CADENCE",),
    ("GUARDSTREAM_QA_SAMPLE_SIZE",),
    ("GUARDSTREAM_METRICS_PORT",),
    ("OTEL_EXPORTER_OTLP_ENDPOINT",),
    ("OTEL_EXPORTER_OTLP_HEADERS",),
    ("OTEL_METRIC_EXPORT_INTERVAL",),
    ("GUARDSTREAM_TRACE_SAMPLE_RATIO",),
    ("GUARDSTREAM_ENVIRONMENT",),
    ("GUARDSTREAM_SLA_TICK_S",),
    ("GUARDSTREAM_SLA_RETAIN_S",),
    ("GUARDSTREAM_SLA_RESPONSE_WINDOW",),
    ("GUARDSTREAM_SLA_DATA_DIR",),
    ("GUARDSTREAM_SLA_SESSION_TIMEOUT_S",),
    ("GUARDSTREAM_WEBHOOK_MAX_ATTEMPTS",),
    ("GUARDSTREAM_WEBHOOK_BACKOFF_BASE_S",),
    ("GUARDSTREAM_WEBHOOK_BACKOFF_CAP_S",),
    ("GUARDSTREAM_WEBHOOK_TIMEOUT_S",),
    ("GUARDSTREAM_WEBHOOK_POLL_S",),
    ("GUARDSTREAM_WEBHOOK_BATCH",),
    ("GUARDSTREAM_WEBHOOK_ALLOW_PRIVATE",),
    ("GUARDSTREAM_WEBHOOK_RETENTION_DAYS",),
    ("GUARDSTREAM_RETENTION_POST_TEXT_DAYS",),
    ("GUARDSTREAM_RETENTION_OUTBOX_DAYS",),
    ("GUARDSTREAM_RETENTION_AUDIT_DAYS",),
    ("GUARDSTREAM_RETENTION_ARCHIVE_DAYS",),
    ("GUARDSTREAM_RETENTION_DLQ_DAYS",),
    ("GUARDSTREAM_RETENTION_TOPIC_DAYS",),
    ("GUARDSTREAM_ERASURE_RECEIPTS_DIR",),
    ("GUARDSTREAM_MAINTENANCE_LOCK_TIMEOUT_S",),
]
EVERY_SETTING = list(every_setting())


def test_the_sections_read_exactly_the_env_names_of_before() -> None:
    assert sorted(field.env for field in EVERY_SETTING) == sorted(FLAT_ENV_NAMES)


def test_every_setting_is_documented_for_the_reference() -> None:
    undocumented = [f.path for f in EVERY_SETTING if not (f.info.description or "").strip()]
    assert not undocumented


def another_value(field: SettingField) -> tuple[str, object]:
    """A value for `field` that is not its default, as the environment spells it, and as the
    field holds it."""
    info, default = field.info, field.info.default
    union = get_origin(info.annotation) in (Union, UnionType)
    (kind,) = (
        [k for k in get_args(info.annotation) if k is not NoneType] if union else [info.annotation]
    )
    limits = {type(m).__name__: m for m in info.metadata}
    if get_origin(kind) is Literal:
        choice = next(c for c in get_args(kind) if c != default)
        return str(choice), choice
    if kind is bool:
        return str(not default).lower(), not default
    if kind is int:
        number = (default or 0) + 1
        return str(number), number
    if kind is float:
        number = (default or 0.5) + 0.5
        if "Le" in limits and number > limits["Le"].le:
            number = (default or 1.0) / 2
        return str(number), number
    if kind is Path:
        return "/tmp/elsewhere", Path("/tmp/elsewhere")
    if field.path == "review.forwarded_allow_ips":
        return "10.0.0.0/8", "10.0.0.0/8"
    if field.path == "retention.topic_days":
        return "posts.v1=3", "posts.v1=3"
    return "other", "other"  # str and SecretStr


@pytest.mark.parametrize("field", EVERY_SETTING, ids=[f.path for f in EVERY_SETTING])
def test_each_env_name_sets_its_own_field(
    monkeypatch: pytest.MonkeyPatch, field: SettingField
) -> None:
    text, value = another_value(field)
    for name in field.env:  # an alternative name (uvicorn's) is read too
        with monkeypatch.context() as env:
            env.setenv(name, text)
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
        read = settings.flat()
        got = read[field.path]
        assert (got.get_secret_value() if isinstance(got, SecretStr) else got) == value
        untouched = Settings(_env_file=None).flat()  # type: ignore[call-arg]
        assert {p for p in read if read[p] != untouched[p]} == {field.path}


def test_the_first_env_name_wins_and_the_environment_beats_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GUARDSTREAM_REVIEW_FORWARDED_ALLOW_IPS", "10.0.0.1")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.2")
    assert Settings(_env_file=None).review.forwarded_allow_ips == "10.0.0.1"  # type: ignore[call-arg]
    dotenv = tmp_path / ".env"
    dotenv.write_text("GUARDSTREAM_REVIEW_PORT=9001\nGUARDSTREAM_REVIEW_LOCK_S=7\n")
    monkeypatch.setenv("GUARDSTREAM_REVIEW_PORT", "9002")
    settings = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    assert (settings.review.port, settings.review.lock_s) == (9002, 7)


def test_the_constructor_beats_the_environment_field_by_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARDSTREAM_REVIEW_MAX_CLAIMS", "0")  # invalid, but overridden
    monkeypatch.setenv("GUARDSTREAM_REVIEW_LOCK_S", "7")
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "from-env")
    settings = Settings(_env_file=None, namespace="given", review={"max_claims": 3})  # type: ignore[call-arg]
    assert settings.namespace == "given"
    assert (settings.review.max_claims, settings.review.lock_s) == (3, 7)


def test_an_integer_choice_is_read_from_its_env_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDSTREAM_MAX_LORA_RANK", "64")
    assert Settings(_env_file=None).engine.max_lora_rank == 64  # type: ignore[call-arg]
    monkeypatch.setenv("GUARDSTREAM_MAX_LORA_RANK", "63")
    with pytest.raises(ValidationError, match="GUARDSTREAM_MAX_LORA_RANK"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_an_invalid_env_value_is_reported_under_its_env_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARDSTREAM_REVIEW_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    (error,) = raised.value.errors()
    assert error["loc"] == ("review", "edge", "GUARDSTREAM_REVIEW_MAX_IN_FLIGHT")


def test_an_unknown_guardstream_variable_stops_the_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARDSTREAM_REVIEW_MAX_CLAIM", "2")  # a typo
    monkeypatch.setenv("guardstream_frobnicate", "s3cret")  # any case
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    errors = {e["loc"]: e["msg"] for e in raised.value.errors()}
    assert errors == {
        ("GUARDSTREAM_FROBNICATE",): "is set but is no guardstream setting",
        ("GUARDSTREAM_REVIEW_MAX_CLAIM",): "is set but is no guardstream setting; "
        "did you mean GUARDSTREAM_REVIEW_MAX_CLAIMS?",
    }
    assert "s3cret" not in str(raised.value)  # values are never shown: they may be secrets


def test_an_unknown_name_in_the_env_file_is_refused_too(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("GUARDSTREAM_REVIEW_PORTT=9001\nUNRELATED=1\n")
    with pytest.raises(ValidationError, match="GUARDSTREAM_REVIEW_PORTT"):
        Settings(_env_file=dotenv)  # type: ignore[call-arg]


def test_the_harness_names_under_the_prefix_are_no_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("KAFKA_SOMETHING_ELSE", "1")  # other prefixes belong to other tools
    Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_flat_constructor_name_is_refused_with_its_section() -> None:
    with pytest.raises(ValidationError) as raised:
        flat = {"review_max_claims": 2, "max_model_len": 512}  # (the rewrite script skips `**`)
        Settings(_env_file=None, **flat)  # type: ignore[arg-type]
    assert {e["loc"]: e["msg"] for e in raised.value.errors()} == {
        ("review_max_claims",): "is no setting; did you mean review.max_claims?",
        ("max_model_len",): "is no setting; did you mean engine.max_model_len?",
    }


def test_replace_validates_merges_sections_and_reads_no_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(_env_file=None, review={"lock_s": 7})  # type: ignore[call-arg]
    monkeypatch.setenv("GUARDSTREAM_REVIEW_PORT", "9002")
    copy = settings.replace(namespace="n", review={"max_claims": 2, "edge": {"max_in_flight": 3}})
    assert copy.namespace == "n" and copy.cache_prefix == "gs:n:"
    assert (copy.review.lock_s, copy.review.max_claims, copy.review.port) == (7, 2, 8090)
    assert copy.review.edge.max_in_flight == 3
    assert copy.review.edge.max_body_bytes == settings.review.edge.max_body_bytes
    assert settings.review.max_claims == 1  # the original is untouched
    with pytest.raises(ValidationError):
        settings.replace(review={"max_claims": 0})
    with pytest.raises(ValidationError):
        settings.replace(review={"max_claim": 2})


def test_the_public_view_names_every_setting_by_its_path() -> None:
    view = Settings(_env_file=None).public_view()  # type: ignore[call-arg]
    assert list(view) == [f.path for f in EVERY_SETTING]
    assert view["review.edge.max_in_flight"] == 64
    assert view["redis.url"] == "redis://127.0.0.1:6379/0"


def test_every_command_reads_dot_env_in_the_working_directory_under_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_FILE_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("GUARDSTREAM_MODEL=tiny\nKAFKA_BOOTSTRAP=127.0.0.1:1\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:2")
    settings = Settings()
    assert (settings.model.name, settings.kafka.bootstrap) == ("tiny", "127.0.0.1:2")
    sources = settings_sources()
    assert sources.from_env_file == ("GUARDSTREAM_MODEL",)
    assert "KAFKA_BOOTSTRAP" in sources.from_environment
    assert "KAFKA_BOOTSTRAP" not in sources.from_env_file  # the environment's wins
    assert str(tmp_path / ".env") in sources.describe()


def test_the_env_file_variable_names_another_file_or_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("GUARDSTREAM_MODEL=from-dot-env\n")
    elsewhere = tmp_path / "local.env"
    elsewhere.write_text("GUARDSTREAM_MODEL=from-elsewhere\n")
    monkeypatch.setenv(ENV_FILE_VAR, str(elsewhere))
    assert Settings().model.name == "from-elsewhere"
    monkeypatch.setenv(ENV_FILE_VAR, "")
    assert Settings().model.name == Settings(_env_file=None).model.name  # type: ignore[call-arg]
    assert settings_sources().describe().endswith("no env file, defaults for the rest")


def test_a_named_env_file_that_is_not_there_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_FILE_VAR, str(tmp_path / "typo.env"))
    with pytest.raises(ValidationError, match=r"typo\.env"):
        Settings()


def test_an_unknown_name_in_the_named_env_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = tmp_path / "local.env"
    named.write_text("GUARDSTREAM_MODLE=tiny\n")
    monkeypatch.setenv(ENV_FILE_VAR, str(named))
    with pytest.raises(ValidationError, match="did you mean GUARDSTREAM_MODEL"):
        Settings()


@given(
    st.dictionaries(
        st.sampled_from([n for f in EVERY_SETTING for n in f.env if n.startswith("GUARDSTREAM_")]),
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\r\x00")),
        max_size=4,
    )
)
def test_an_env_file_written_for_settings_reads_back_as_written(values: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as folder:  # tmp_path is per test, not per example
        path = Path(folder) / ".env"
        path.write_text(env_file_text(values, header="written by a test\nsecond line"))
        read = DotEnvSettingsSource(Settings, env_file=path).env_vars
    assert dict(read) == {name.lower(): value for name, value in values.items()}


@given(st.text(), st.sampled_from("\n\r\x00"), st.text())
def test_a_value_an_env_file_cannot_hold_is_refused(head: str, breaker: str, tail: str) -> None:
    with pytest.raises(ValueError, match="GUARDSTREAM_MODEL"):
        env_file_text({"GUARDSTREAM_MODEL": head + breaker + tail})


def test_topic_retention_overrides_are_checked_and_applied() -> None:
    from guardstream.contracts.topics import SPECS, Topic
    from guardstream.runtime.kafka import topic_retention_ms
    from guardstream.runtime.settings import topic_overrides

    assert topic_overrides(" posts.v1=3, moderation.shadow.v1=0.5 ,") == {
        "posts.v1": 3.0,
        "moderation.shadow.v1": 0.5,
    }
    for bad in ("posts.v1", "posts.v1=0", "=3", "posts.v1=x", "posts.v1=9999"):
        with pytest.raises(ValueError, match="topic=days"):
            topic_overrides(bad)
    retention = topic_retention_ms(
        Settings(_env_file=None, retention={"dlq_days": 2, "topic_days": "posts.v1=3"})  # type: ignore[call-arg]
    )
    day = 86_400_000
    assert retention[Topic.DLQ] == 2 * day and retention[Topic.POSTS] == 3 * day
    assert retention[Topic.REVIEWS] == SPECS[Topic.REVIEWS].retention_ms
