import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from guardstream.runtime.settings import Settings, mask_url, url_secrets
from tests.support.hostile_urls import url_with_secrets

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
        otlp_endpoint="https://collector:4318/?api_key=Zq9k",
        redis_url=SecretStr("redis://h:6379/0?password=Zq9r"),
    )
    view = str(settings.public_view())
    assert "Zq9" not in view
    assert "https://collector:4318/?api_key=***" in view
