"""`guardstream review add-reviewer` without a terminal, as a script or `make up` runs it,
against a real PostgreSQL schema of the test's own: it never prompts; it generates a password
and prints it once, or reads it with --password-stdin; the password it prints or was given is
the one the console's login accepts, the token (last line of stdout) the one the API accepts;
and it says where to log in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from guardstream.review.services.auth import Unauthenticated
from guardstream.review.wiring import review_services
from guardstream.runtime.settings import Settings
from tests.conftest import free_port
from tests.integration.cli.conftest import Ran, guardstream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADD = ("review", "add-reviewer", "--id", "alice", "--tenant", "acme")


@pytest.fixture
async def review_settings(settings: Settings, database_url: str) -> AsyncIterator[Settings]:
    schema = f"t_{settings.namespace}"
    yield settings.replace(
        database={"url": SecretStr(database_url), "review_schema": schema},
        review={"port": free_port()},
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def env(settings: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": settings.database.url.get_secret_value(),
        "GUARDSTREAM_REVIEW_DB_SCHEMA": settings.database.review_schema,
        "GUARDSTREAM_REVIEW_PORT": str(settings.review.port),
    }


async def add(settings: Settings, *args: str, stdin: bytes | None = None) -> Ran:
    return await guardstream(settings, *ADD, *args, stdin=stdin, env=env(settings))


async def logs_in(settings: Settings, password: str) -> bool:
    async with review_services(settings) as review:
        try:
            await review.auth.login("alice", password)
        except Unauthenticated:
            return False
        return True


async def test_without_a_terminal_a_password_is_generated_and_printed_once(
    review_settings: Settings,
) -> None:
    ran = await add(review_settings, "--token")  # stdin is /dev/null: no terminal
    assert ran.code == 0, ran.stderr
    assert "GetPassWarning" not in ran.stderr and "Traceback" not in ran.stderr
    (password,) = re.findall(r"^password \(generated, shown once\): (\S+)$", ran.stdout, re.M)
    assert len(password) >= 20
    assert await logs_in(review_settings, password)
    assert not await logs_in(review_settings, password[:-1])
    # Where to log in, with what; the token stays the last line (scripts read it there).
    said = " ".join(ran.stdout.split())
    login = f"http://127.0.0.1:{review_settings.review.port}/console/login"
    assert f"log in to the console at {login} as alice with the password generated above" in said
    assert "the token below is for the API only" in said
    token = ran.lines[-1]
    assert token.startswith("gsr_")
    async with review_services(review_settings) as review:
        owner = await review.auth.from_token(token, path="/api/v1/queue")
    assert owner.id == "alice"

    # Again: a new password each time, and the old one stops working (a reset).
    again = await add(review_settings)
    assert again.code == 0, again.stderr
    (second,) = re.findall(r"^password \(generated, shown once\): (\S+)$", again.stdout, re.M)
    assert second != password
    assert "password reset: 1 token(s)" in " ".join(again.stdout.split())
    assert await logs_in(review_settings, second)
    assert not await logs_in(review_settings, password)


async def test_password_stdin_sets_the_given_password_and_never_prints_it(
    review_settings: Settings,
) -> None:
    ran = await add(review_settings, "--password-stdin", stdin=b"correct-horse-battery\n")
    assert ran.code == 0, ran.stderr
    assert "correct-horse-battery" not in ran.stdout + ran.stderr
    assert "generated" not in ran.stdout
    assert "with the password you gave" in " ".join(ran.stdout.split())
    assert await logs_in(review_settings, "correct-horse-battery")

    short = await add(review_settings, "--password-stdin", stdin=b"short\n")
    assert short.code == 2 and "at least 8 characters" in short.stderr
    both = await add(review_settings, "--password-stdin", "--generate-password", stdin=b"x" * 9)
    assert both.code == 2 and "at most one of" in both.stderr
    # Neither changed the password.
    assert await logs_in(review_settings, "correct-horse-battery")
