"""Credentials that can be taken back, and the claim limit, against the real review process
(uvicorn, PostgreSQL, the broker) and the real `guardstream review` commands:

- a password reset, a disable, `revoke-token` and logout end tokens and sessions from the very
  next request; a disabled reviewer cannot log in until enabled again;
- expired tokens and sessions are purged by the process;
- the session cookie is Secure by default, and a trusted proxy's X-Forwarded-Proto counts;
- one reviewer holds at most `GUARDSTREAM_REVIEW_MAX_CLAIMS` tasks, whoever writes the
  assignment (the service, or SQL bypassing it), under concurrency.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import httpx
import pytest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.contracts.events import utcnow
from guardstream.review import auth
from guardstream.review.console import COOKIE
from guardstream.runtime.settings import ReviewSettings, Settings
from tests.integration.review.conftest import PASSWORD, Console, serve
from tests.integration.review.test_review_api import seed
from tests.integration.review.test_review_authz import login

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

runner = CliRunner()
NEW_PASSWORD = "an0ther-pass"


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": settings.database.url.get_secret_value(),
        "GUARDSTREAM_REVIEW_DB_SCHEMA": settings.database.review_schema,
    }


async def cli(console: Console, *args: str, stdin: str | None = None) -> Result:
    """`guardstream review ARGS` as a user runs it (in a thread: it runs its own event loop)."""
    result = await asyncio.to_thread(
        runner.invoke, app, ["review", *args], input=stdin, env=cli_env(console.settings)
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def said(result: Result) -> str:
    """What the command printed, as one line (rich wraps at the terminal width)."""
    return " ".join(result.output.split())


async def api_status(console: Console, token: str) -> int:
    async with console.client(token=token) as http:
        return (await http.get("/api/v1/queue")).status_code


async def token_for(console: Console, who: str, password: str = PASSWORD) -> httpx.Response:
    async with console.client() as http:
        return await http.post("/api/v1/auth/token", json={"reviewer": who, "password": password})


async def cookie_works(console: Console, cookie: str) -> bool:
    """Whether a copy of a session cookie still opens the queue page (else: sent to login)."""
    async with httpx.AsyncClient(base_url=console.base_url, cookies={COOKIE: cookie}) as http:
        status = (await http.get("/console")).status_code
    assert status in (200, 303)
    return status == 200


@asynccontextmanager
async def browser_session(
    console: Console, who: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A logged-in browser and its session cookie."""
    async with httpx.AsyncClient(base_url=console.base_url) as http:
        await login(console, http, who)
        yield http, http.cookies[COOKIE]


async def test_a_password_reset_ends_every_token_and_session_at_once(console: Console) -> None:
    await console.add_reviewer("alice", ("acme",))
    old_token = console.tokens["alice"]
    async with browser_session(console, "alice") as (http, cookie):
        assert await api_status(console, old_token) == 200
        assert await cookie_works(console, cookie)
        reset = await cli(
            console,
            "add-reviewer",
            "--id",
            "alice",
            "--tenant",
            "acme",
            "--password-stdin",
            stdin=NEW_PASSWORD + "\n",
        )
        assert reset.exit_code == 0, reset.output
        # The very next request: no cache lets the old credentials through.
        assert await api_status(console, old_token) == 401
        assert not await cookie_works(console, cookie)
        assert (await http.get("/console")).status_code == 303
    assert (await token_for(console, "alice")).status_code == 401
    fresh = await token_for(console, "alice", NEW_PASSWORD)
    assert fresh.status_code == 200
    assert await api_status(console, fresh.json()["token"]) == 200
    rows = await console.sql(
        "SELECT detail->>'revoked_tokens' AS t, detail->>'revoked_sessions' AS s FROM audit"
        " WHERE action = 'reviewer.put' AND actor = 'cli'"
    )
    assert [(r["t"], r["s"]) for r in rows] == [("1", "1")]


async def test_logout_ends_the_session_on_the_server(console: Console) -> None:
    await console.add_reviewer("alice", ("acme",))
    async with browser_session(console, "alice") as (http, cookie):
        async with browser_session(console, "alice") as (_, other_cookie):  # a second browser
            page = await http.get("/console")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf
            out = await http.post("/console/logout", data={"csrf": csrf.group(1)})
            assert out.status_code == 303
            assert "max-age=0" in out.headers["set-cookie"].lower()
            # A copy of the cookie kept elsewhere is refused: the session is gone.
            assert not await cookie_works(console, cookie)
            async with httpx.AsyncClient(
                base_url=console.base_url, cookies={COOKIE: cookie}
            ) as replay:
                post = await replay.post("/console/logout", data={"csrf": csrf.group(1)})
            assert post.status_code == 401
            # Only that session: the other browser stays logged in.
            assert await cookie_works(console, other_cookie)
    rows = await console.sql("SELECT count(*) AS n FROM console_sessions")
    assert rows[0]["n"] == 1


async def test_disable_locks_a_reviewer_out_and_enable_lets_them_back(console: Console) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("alice", ("acme",))
    token = console.tokens["alice"]
    async with browser_session(console, "alice") as (_, cookie):
        pass
    async with console.client("alice") as api:
        claimed = (await api.post("/api/v1/tasks/claim")).json()
    assert claimed["task_id"] == tid

    disabled = await cli(console, "disable-reviewer", "--id", "alice")
    assert disabled.exit_code == 0, disabled.output
    assert "1 token(s) and 1 session(s) revoked, 1 task(s) back in the queue" in said(disabled)
    assert await api_status(console, token) == 401
    assert not await cookie_works(console, cookie)
    assert (await token_for(console, "alice")).status_code == 401
    async with httpx.AsyncClient(base_url=console.base_url) as browser:
        page = await browser.post(
            "/console/login", data={"reviewer": "alice", "password": PASSWORD}
        )
    assert page.status_code == 401 and COOKIE not in page.cookies
    task = await console.sql("SELECT state, assignee FROM tasks WHERE task_id = $1", tid)
    assert (task[0]["state"], task[0]["assignee"]) == ("pending", None)
    events = await console.sql(
        "SELECT count(*) AS n FROM outbox WHERE topic = 'moderation.review-assignments.v1'"
        " AND convert_from(payload, 'UTF8')::jsonb->>'event' = 'released'"
    )
    assert events[0]["n"] == 1

    enabled = await cli(console, "enable-reviewer", "--id", "alice")
    assert enabled.exit_code == 0, enabled.output
    fresh = await token_for(console, "alice")
    assert fresh.status_code == 200
    assert await api_status(console, fresh.json()["token"]) == 200
    assert await api_status(console, token) == 401  # what was revoked stays revoked
    actions = await console.sql(
        "SELECT action FROM audit WHERE actor = 'cli' AND action LIKE 'reviewer.%' ORDER BY id"
    )
    assert [r["action"] for r in actions] == ["reviewer.disable", "reviewer.enable"]


async def test_revoke_token_ends_one_token_or_all_of_a_reviewers(console: Console) -> None:
    await console.add_reviewer("alice", ("acme",))
    first = console.tokens["alice"]
    second = (await token_for(console, "alice")).json()["token"]
    revoked = await cli(console, "revoke-token", "--token-stdin", stdin=first + "\n")
    assert revoked.exit_code == 0, revoked.output
    assert "token of reviewer alice revoked" in said(revoked)
    assert await api_status(console, first) == 401
    assert await api_status(console, second) == 200
    again = await cli(console, "revoke-token", "--token-stdin", stdin=first + "\n")
    assert again.exit_code == 1 and "no such token" in said(again)
    every = await cli(console, "revoke-token", "--id", "alice")
    assert every.exit_code == 0 and "1 token(s)" in said(every)
    assert await api_status(console, second) == 401


async def test_the_process_purges_expired_tokens_and_sessions(console: Console) -> None:
    await console.add_reviewer("alice", ("acme",))
    past = utcnow() - timedelta(seconds=1)
    for _ in range(3):
        await console.review.store.store_token("alice", auth.token_hash(auth.new_token()), past)
    await console.review.store.store_session("alice", auth.token_hash("gone"), past)
    live = console.tokens["alice"]
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # the background loop purges every fifth round
        left = await console.sql(
            "SELECT (SELECT count(*) FROM api_tokens) AS t,"
            " (SELECT count(*) FROM console_sessions) AS s"
        )
        if (left[0]["t"], left[0]["s"]) == (1, 0):
            break
        assert asyncio.get_running_loop().time() < deadline, dict(left[0])
        await asyncio.sleep(0.2)
    assert await api_status(console, live) == 200
    # Issuing a token also drops the reviewer's expired ones at once.
    await console.review.store.store_token("alice", auth.token_hash(auth.new_token()), past)
    await token_for(console, "alice")
    rows = await console.sql("SELECT count(*) AS n FROM api_tokens WHERE expires_at <= now()")
    assert rows[0]["n"] == 0


@pytest.mark.parametrize(
    ("cookie_secure", "allow_ips", "forwarded", "secure"),
    [
        (None, None, None, True),  # the defaults
        (False, None, "https", True),  # a proxy on 127.0.0.1 (trusted by default) says https
        (False, "10.1.2.3", "https", False),  # an untrusted client's header counts for nothing
        (False, None, None, False),  # local use over plain http
    ],
)
async def test_the_session_cookie_is_secure_by_default_and_behind_a_trusted_proxy(
    review_settings: Settings,
    cookie_secure: bool | None,
    allow_ips: str | None,
    forwarded: str | None,
    secure: bool,
) -> None:
    defaults = ReviewSettings()
    review = {
        "cookie_secure": defaults.cookie_secure if cookie_secure is None else cookie_secure,
        "forwarded_allow_ips": allow_ips or defaults.forwarded_allow_ips,
    }
    async with serve(review_settings.replace(review=review)) as console:
        await console.add_reviewer("alice", ("acme",))
        headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
        async with httpx.AsyncClient(base_url=console.base_url, headers=headers) as http:
            page = await http.get("/console/login")
            response = await http.post(
                "/console/login", data={"reviewer": "alice", "password": PASSWORD}
            )
    assert response.status_code == 303
    attributes = [a.strip().lower() for a in response.headers["set-cookie"].split(";")]
    assert ("secure" in attributes) is secure
    assert {"httponly", "samesite=strict"} <= set(attributes)
    # Over plain http with Secure cookies on, the login page says what to set for local use.
    assert ('id="plain-http"' in page.text) is (review["cookie_secure"] and not forwarded)


async def test_the_database_bounds_claims_whoever_writes_them(console: Console) -> None:
    """Concurrent assignments to one reviewer straight in SQL, past the service: the trigger
    lets exactly the configured number through, for the default limit and a larger one."""
    tids = await seed(console, 8)
    await console.add_reviewer("alice", ("acme",))
    dsn = console.settings.database.url.get_secret_value()
    schema = console.settings.database.review_schema

    async def assign(task_id: str) -> bool:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE tasks SET state = 'assigned', assignee = 'alice',"
                    " lock_expires_at = now() + interval '1 minute' WHERE task_id = $1",
                    task_id,
                )
                await conn.execute("SELECT pg_sleep(0.05)")  # hold the race window open
            return True
        except asyncpg.CheckViolationError as exc:
            assert exc.constraint_name == "tasks_claim_limit"
            return False
        finally:
            await conn.close()

    for limit in (1, 3):
        await console.review.store.set_claim_limit(limit)
        await console.sql(
            "UPDATE tasks SET state = 'pending', assignee = NULL, lock_expires_at = NULL"
        )
        results = await asyncio.gather(*(assign(t) for t in tids))
        assert sum(results) == limit
        held = await console.sql(
            "SELECT count(*) AS n FROM tasks WHERE assignee = 'alice' AND state = 'assigned'"
        )
        assert held[0]["n"] == limit
    # Another reviewer is not held back by alice's claims.
    await console.add_reviewer("bob", ("acme",))
    free = await console.sql("SELECT task_id FROM tasks WHERE state = 'pending' LIMIT 1")
    await console.sql(
        "UPDATE tasks SET state = 'assigned', assignee = 'bob' WHERE task_id = $1",
        free[0]["task_id"],
    )


@pytest.mark.parametrize("python_limit", [None, 10])
async def test_concurrent_claims_of_one_reviewer_hold_at_most_the_limit(
    review_settings: Settings, python_limit: int | None
) -> None:
    """Thirty concurrent claims through the API: two tasks held (the limit), never more. With
    the service's own check loosened (10), the database still holds the line: the claims past
    it are refused with 409, none succeeds."""
    async with serve(review_settings.replace(review={"max_claims": 2})) as console:
        await seed(console, 5)
        await console.add_reviewer("alice", ("acme",))
        if python_limit is not None:
            console.review.service.max_claims = python_limit
        async with console.client("alice") as http:
            answers = await asyncio.gather(*(http.post("/api/v1/tasks/claim") for _ in range(30)))
        held = await console.sql(
            "SELECT task_id FROM tasks WHERE assignee = 'alice' AND state = 'assigned'"
        )
    assert len(held) == 2
    statuses = {a.status_code for a in answers}
    returned = {a.json()["task_id"] for a in answers if a.status_code == 200}
    assert returned == {r["task_id"] for r in held}
    if python_limit is None:
        assert statuses == {200}
    else:
        assert statuses == {200, 409}
        refused = [a for a in answers if a.status_code == 409]
        assert all("decide or release one" in a.json()["detail"] for a in refused)


@pytest.fixture(scope="module")
def cli_settings(database_url: str) -> Iterator[Settings]:
    schema = f"t_cli_{uuid.uuid4().hex[:10]}"
    yield Settings(database={"url": database_url, "review_schema": schema})

    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@settings(max_examples=25, deadline=None)
@given(
    command=st.sampled_from(
        [("disable-reviewer", "--id"), ("enable-reviewer", "--id"), ("revoke-token", "--id")]
    ),
    reviewer_id=st.text(max_size=200),
)
def test_admin_commands_answer_any_id_with_a_message_never_a_traceback(
    cli_settings: Settings, command: tuple[str, str], reviewer_id: str
) -> None:
    result = runner.invoke(
        app, ["review", command[0], command[1], reviewer_id], env=cli_env(cli_settings)
    )
    assert isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (1, 2), result.output
    assert "no reviewer with id" in said(result) or "--id must be" in said(result)


@settings(max_examples=15, deadline=None)
@given(token=st.text(st.characters(exclude_categories=("Cs",)), max_size=100))
def test_revoke_token_answers_any_token_with_a_message_never_a_traceback(
    cli_settings: Settings, token: str
) -> None:
    result = runner.invoke(
        app,
        ["review", "revoke-token", "--token-stdin"],
        input=token.replace("\n", " ") + "\n",
        env=cli_env(cli_settings),
    )
    assert isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (1, 2), result.output
    assert "no such token" in said(result) or "not a token" in said(result)
