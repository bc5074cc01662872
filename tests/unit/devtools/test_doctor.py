"""Doctor's output rules: secrets scrubbed from every message, one line per check, exit code."""

import pytest
from pydantic import SecretStr

from guardstream.devtools.doctor import Status, fail, healthy, ok, render_text, scrub, warn
from guardstream.runtime.settings import Settings

pytestmark = pytest.mark.unit


def test_secret_values_and_url_passwords_are_scrubbed() -> None:
    settings = Settings(
        redis={"url": SecretStr("redis://guard:pw-redis-1@cache:6379/0")},
        database={"url": SecretStr("postgresql://app:pw-pg-2@db/reviews")},
        kafka={"sasl_password": SecretStr("pw-sasl-3")},
    )
    text = scrub(
        "redis://guard:pw-redis-1@cache:6379/0 refused; password pw-pg-2 or pw-sasl-3 wrong",
        settings,
    )
    assert "pw-" not in text
    assert text.startswith("redis://guard:***@cache:6379/0 refused")


def test_report_lines_and_verdict() -> None:
    findings = [
        ok("broker", "reachable"),
        warn("model", "not built yet", "run build-tiny"),
        fail("redis", "not reachable", "start redis"),
    ]
    text = render_text(findings).splitlines()
    assert text[0].split()[:2] == ["ok", "broker"]
    assert text[1].split()[:2] == ["warn", "model"] and "fix: run build-tiny" in text[2]
    assert text[3].split()[:2] == ["FAIL", "redis"] and "fix: start redis" in text[4]
    assert text[-1] == "1 failed, 1 warning(s)"
    assert not healthy(findings)
    assert healthy(findings[:2]) and findings[1].status is Status.WARN
    assert render_text(findings[:1]).splitlines()[-1] == "all checks passed"
