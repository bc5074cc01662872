import pytest
from pydantic import ValidationError

from guardstream.core.settings import Settings, redact_url

pytestmark = pytest.mark.unit


def test_addresses_come_from_the_documented_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:6379/1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc:s3cret@db/guard")
    monkeypatch.setenv("GUARDSTREAM_MODEL", "Qwen/Qwen3Guard-Gen-8B")
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "staging")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka_bootstrap == "kafka-0:9092,kafka-1:9092"
    assert settings.redis_url.get_secret_value() == "redis://:hunter2@cache:6379/1"
    assert settings.model == "Qwen/Qwen3Guard-Gen-8B"
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
    assert settings.public_view()["database_url"] == "postgresql://svc:***@db/guard"


def test_settings_are_frozen() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        settings.namespace = "other"  # type: ignore[misc]


def test_invalid_values_are_rejected_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDSTREAM_NAMESPACE", "Not Valid!")
    with pytest.raises(ValidationError, match="namespace"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_review_auth_settings_default_to_the_safe_side(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.review_cookie_secure is True
    assert settings.review_forwarded_allow_ips == "127.0.0.1,::1"
    assert settings.review_max_claims == 1
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8, 192.168.1.7,*")  # uvicorn's name
    monkeypatch.setenv("GUARDSTREAM_REVIEW_COOKIE_SECURE", "false")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.review_forwarded_allow_ips == "10.0.0.0/8, 192.168.1.7,*"
    assert settings.review_cookie_secure is False


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
    with pytest.raises(ValidationError, match="(?i)review_"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
