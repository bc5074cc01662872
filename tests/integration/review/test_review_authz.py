"""RELIABILITY.md scenario 16 — review API authorisation: another tenant's task, no token,
expired or tampered token, CSRF-less form post → 404/401/403; every access audited; a failed
audit write fails the request and stores nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest

from guardstream.contracts.events import utcnow
from guardstream.review import auth
from guardstream.review.console import COOKIE
from guardstream.review.logic import Role
from tests.integration.review.conftest import PASSWORD, Console
from tests.integration.review.test_review_api import seed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CONFIRM = {"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]}


async def denied(console: Console, action: str) -> list[dict[str, object]]:
    rows = await console.sql(
        "SELECT actor, action, outcome, tenant, task_id, detail::text AS detail FROM audit"
        " WHERE outcome = 'denied' AND action = $1 ORDER BY id",
        action,
    )
    return [dict(r) for r in rows]


async def test_a_reviewer_never_reads_another_tenants_task(console: Console) -> None:
    [tid] = await seed(console, 1, tenant="acme")
    await console.add_reviewer("bob", ("globex",))
    async with console.client("bob") as http:
        read = await http.get(f"/api/v1/tasks/{tid}")
        decide = await http.post(f"/api/v1/tasks/{tid}/decision", json=CONFIRM)
        release = await http.post(f"/api/v1/tasks/{tid}/release")
        queue = (await http.get("/api/v1/queue")).json()
        other = await http.get("/api/v1/queue", params={"tenant": "acme"})
        claim = (await http.post("/api/v1/tasks/claim")).json()
    # Not found, exactly like a task that does not exist: no existence leak.
    assert read.status_code == decide.status_code == release.status_code == 404
    assert read.json() == {"detail": "no such task"}
    assert queue["tasks"] == [] and queue["stats"]["queue_depth"] == 0
    assert other.status_code == 403
    assert claim is None
    rows = await denied(console, "task.read")
    assert rows and rows[0]["actor"] == "bob" and rows[0]["tenant"] == "acme"
    assert rows[0]["task_id"] == tid and "other tenant" in str(rows[0]["detail"])
    assert await denied(console, "task.decide")
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0
    assert (await console.sql("SELECT state FROM tasks"))[0]["state"] == "pending"


async def test_an_admin_sees_the_queue_but_never_the_text(console: Console) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("root", ("*",), role=Role.ADMIN)
    async with console.client("root") as http:
        body = (await http.get(f"/api/v1/tasks/{tid}")).json()
        decide = await http.post(f"/api/v1/tasks/{tid}/decision", json=CONFIRM)
    assert body["task_id"] == tid and body["text"] is None
    assert decide.status_code == 403


@pytest.mark.parametrize("case", ["none", "garbage", "tampered", "expired", "not bearer"])
async def test_missing_bad_or_expired_tokens_are_refused(console: Console, case: str) -> None:
    [tid] = await seed(console, 1)
    reviewer = await console.add_reviewer("alice", ("acme",))
    good = console.tokens["alice"]
    headers: dict[str, str] = {}
    if case == "garbage":
        headers["Authorization"] = "Bearer nonsense"
    elif case == "tampered":
        headers["Authorization"] = "Bearer " + good[:-1] + ("A" if good[-1] != "A" else "B")
    elif case == "expired":
        old = auth.new_token()
        await console.review.services.store.credentials.store_token(
            reviewer.id, auth.token_hash(old), utcnow() - timedelta(seconds=1)
        )
        headers["Authorization"] = f"Bearer {old}"
    elif case == "not bearer":
        headers["Authorization"] = f"Basic {good}"
    async with httpx.AsyncClient(base_url=console.base_url, headers=headers) as http:
        for response in (
            await http.get(f"/api/v1/tasks/{tid}"),
            await http.get("/api/v1/queue"),
            await http.post(f"/api/v1/tasks/{tid}/decision", json=CONFIRM),
        ):
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
    rows = await denied(console, "api")
    assert len(rows) == 3 and all(r["actor"] is None for r in rows)
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0
    # The good token still works.
    async with console.client("alice") as http:
        assert (await http.get(f"/api/v1/tasks/{tid}")).status_code == 200


async def login(console: Console, http: httpx.AsyncClient, who: str) -> str:
    response = await http.post("/console/login", data={"reviewer": who, "password": PASSWORD})
    assert response.status_code == 303, response.text
    cookie = response.cookies[COOKIE]
    header = response.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header
    assert http.cookies[COOKIE] == cookie
    page = await http.get("/console")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def test_console_form_posts_need_the_session_and_its_csrf_token(console: Console) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("alice", ("acme",))
    async with httpx.AsyncClient(base_url=console.base_url) as http:
        # No session: pages send to the login page, posts are refused.
        assert (await http.get("/console")).status_code == 303
        anon = await http.post(f"/console/tasks/{tid}/decide", data={**CONFIRM, "csrf": "x"})
        assert anon.status_code == 401
        wrong = await http.post("/console/login", data={"reviewer": "alice", "password": "no"})
        assert wrong.status_code == 401
        csrf = await login(console, http, "alice")
        form = {"outcome": "confirm", "reason": "同意模型判断", "tags": "政治隐喻"}
        no_csrf = await http.post(f"/console/tasks/{tid}/decide", data=form)
        bad_csrf = await http.post(f"/console/tasks/{tid}/decide", data={**form, "csrf": "x"})
        assert no_csrf.status_code == bad_csrf.status_code == 403
        assert "CSRF" in no_csrf.text and no_csrf.headers["content-type"].startswith("text/html")
        # A tampered cookie is no session at all.
        forged = http.cookies[COOKIE][:-2] + "xx"
        async with httpx.AsyncClient(base_url=console.base_url, cookies={COOKIE: forged}) as forger:
            tampered = await forger.post(
                f"/console/tasks/{tid}/decide", data={**form, "csrf": csrf}
            )
        assert tampered.status_code == 401
        assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0
        ok = await http.post(f"/console/tasks/{tid}/decide", data={**form, "csrf": csrf})
        assert ok.status_code == 303, ok.text
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 1
    csrf_rows = await denied(console, "console")
    assert any("CSRF" in str(r["detail"]) for r in csrf_rows)
    assert any("no valid session" in str(r["detail"]) for r in csrf_rows)
    assert await denied(console, "login")


async def test_every_access_is_audited(console: Console) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        await http.get("/api/v1/queue")
        await http.post("/api/v1/tasks/claim")
        await http.get(f"/api/v1/tasks/{tid}")
        await http.post(f"/api/v1/tasks/{tid}/decision", json=CONFIRM)
    rows = await console.sql(
        "SELECT action FROM audit WHERE actor = 'alice' AND outcome = 'ok' ORDER BY id"
    )
    assert [r["action"] for r in rows] == [
        "token.issue",
        "queue",
        "task.claim",
        "task.read",
        "task.context",  # the similar decisions and author panel shown beside it
        "task.decide",
    ]


async def test_a_failed_audit_write_fails_the_request_and_stores_nothing(
    console: Console,
) -> None:
    [tid] = await seed(console, 1)
    await console.add_reviewer("alice", ("acme",))
    outbox = (await console.sql("SELECT count(*) AS n FROM outbox"))[0]["n"]
    # A real database failure on the audit insert (only for this schema's audit table).
    await console.sql(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$"
    )
    await console.sql(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit"
        " FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
    )
    async with console.client("alice") as http:
        decide = await http.post(f"/api/v1/tasks/{tid}/decision", json=CONFIRM)
        read = await http.get(f"/api/v1/tasks/{tid}")
        claim = await http.post("/api/v1/tasks/claim")
        queue = await http.get("/api/v1/queue")
    for response in (decide, read, claim, queue):
        assert response.status_code == 503, response.text
        assert "nothing was done" in response.json()["detail"]
    assert "text" not in read.json() and "tasks" not in queue.json()
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0
    assert (await console.sql("SELECT state FROM tasks"))[0]["state"] == "pending"
    assert (await console.sql("SELECT count(*) AS n FROM outbox"))[0]["n"] == outbox
    await console.sql("DROP TRIGGER refuse_audit ON audit")
    async with console.client("alice") as http:
        assert (await http.post(f"/api/v1/tasks/{tid}/decision", json=CONFIRM)).status_code == 200
