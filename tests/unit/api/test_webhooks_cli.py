"""`guardstream webhooks` with hostile arguments: every invalid tenant, URL or status is refused
with a reason and exit 2 before any database is touched (the database URL here leads nowhere,
so a command that got that far would fail differently), and no reason quotes a credential."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from guardstream.api.webhooks import url_problem
from guardstream.cli import app
from guardstream.contracts.events import Tenant
from tests.support.hostile_urls import url_with_secrets

pytestmark = pytest.mark.unit

runner = CliRunner()
NOWHERE = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "GUARDSTREAM_ENV_FILE": ""}
_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)
HOSTILE = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60)


def bad_tenant(text: str) -> bool:
    try:
        _TENANT.validate_python(text)
    except ValidationError:
        return True
    return False


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["webhooks", *args], env=NOWHERE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    (HOSTILE | st.sampled_from(["--url", "-", "Acme", "a" * 64, "acme\n", ""])).filter(bad_tenant),
    st.sampled_from(["set", "remove", "deliveries"]),
)
def test_a_hostile_tenant_exits_2_with_the_rule(tenant: str, command: str) -> None:
    # `--name=value`: a value starting with `-` is still the value.
    args = [f"--tenant={tenant}"] + (["--url=https://example.com/h"] if command == "set" else [])
    code, output = run(command, *args)
    assert code == 2, output
    assert "a tenant is 1-63 characters" in output


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    HOSTILE
    | url_with_secrets(schemes=("http", "https", "ftp"), hosts=("example.com", "10.0.0.1")).map(
        lambda drawn: drawn[0]
    )
)
def test_a_hostile_url_exits_2_and_quotes_no_credential(url: str) -> None:
    if url_problem(url, allow_private=False) is None:
        return  # an acceptable URL: not this test's business (it would reach the database)
    code, output = run("set", "--tenant=acme", f"--url={url}")
    assert code == 2, output
    assert "refused:" in output and "Traceback" not in output
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if len(userinfo) > 6:
        assert userinfo not in output


def test_a_private_address_is_refused_unless_allowed() -> None:
    code, output = run("set", "--tenant", "acme", "--url", "http://169.254.169.254/latest")
    assert code == 2 and "link-local" in output


def test_an_unknown_status_exits_2() -> None:
    code, output = run("deliveries", "--tenant", "acme", "--status", "lost")
    assert code == 2 and "pending, delivered, dead" in output
