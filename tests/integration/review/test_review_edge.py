"""The review API sheds load instead of falling over (issue 17), against the real process and
PostgreSQL: oversized bodies (413, declared or streamed, not read past the limit), login
throttling per id and per address (429 + Retry-After, audited at a bounded rate), the in-flight
limits (503 / 429 at once while /healthz answers), the same hash work for an unknown id, no
input echoed in a 422, and control characters refused with 422 before the database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import warnings
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from guardstream.review import auth
from guardstream.review.auth import UNKNOWN_ID_HASH, HashPool
from guardstream.runtime.settings import Settings
from tests.integration.review.conftest import PASSWORD, Console

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MAX_BODY = 64 * 1024


@pytest.fixture
async def review_settings(review_settings: Settings) -> AsyncIterator[Settings]:
    yield review_settings.replace(
        review={
            "edge": {
                "max_body_bytes": MAX_BODY,
                "max_in_flight": 3,
                "max_in_flight_anonymous": 2,
                "login_per_id_per_min": 3,
                "login_per_address_per_min": 6,
                # One audit row for refused attempts, then (nearly) none for the rest of a test.
                "denied_audit_per_s": 0.001,
            },
        },
    )


async def raw_request(
    port: int, head: str, chunks: int = 0, chunk: bytes = b""
) -> tuple[int, int, bytes]:
    """Send `head`, then up to `chunks` HTTP/1.1 chunks while reading the answer. Returns the
    status, how many chunks went out before the server answered or closed, and the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(head.encode())
        await writer.drain()
        answer = asyncio.create_task(reader.read(65536))
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        while sent < chunks and not answer.done():
            try:
                writer.write(frame)
                await writer.drain()
            except (ConnectionError, OSError):
                break
            sent += 1
        raw = await asyncio.wait_for(answer, 30)
        with contextlib.suppress(ConnectionError):
            raw += await asyncio.wait_for(reader.read(), 30)  # the rest, up to the close
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0
    return status, sent, raw


async def test_an_oversized_body_is_refused_without_being_read(console: Console) -> None:
    port = console.settings.review.port
    # Declared: refused before a byte of the body is read.
    status, _, raw = await raw_request(
        port,
        "POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n",
    )
    assert status == 413 and b'"field":"body"' in raw
    # Streamed (chunked, no length): 50 MiB offered in 64 KiB chunks; the server answers
    # once the limit is passed and closes, so most of it is never sent, let alone buffered.
    chunk = b"x" * (64 * 1024)
    status, sent, raw = await raw_request(
        port,
        "POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        chunks=800,
        chunk=chunk,
    )
    assert status == 413, raw[:200]
    assert b"connection: close" in raw.lower()
    # ~60 here: what the loopback's socket buffers take before the server's close is seen.
    assert sent < 160, f"{sent} chunks of 64 KiB (of 800) went out before the 413"
    # An authenticated route's body is limited the same way, and the process still serves.
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:
        big = await http.post("/api/v1/tasks/t/decision", content=b"{" + b" " * MAX_BODY + b"}")
        assert big.status_code == 413 and big.json()["field"] == "body"
        assert (await http.get("/api/v1/tags")).status_code == 200


async def test_logins_are_throttled_per_id_then_per_address(console: Console) -> None:
    await console.add_reviewer("alice", ("acme",))
    async with console.client() as http:
        wrong = [
            await http.post("/api/v1/auth/token", json={"reviewer": "alice", "password": "no"})
            for _ in range(3)
        ]
        assert [r.status_code for r in wrong] == [401, 401, 401]
        # The id's budget is spent: even the right password waits, and is told how long.
        right = await http.post(
            "/api/v1/auth/token", json={"reviewer": "alice", "password": PASSWORD}
        )
        assert right.status_code == 429
        assert int(right.headers["Retry-After"]) >= 1
        assert "reviewer" in right.json()["detail"]
        # Other ids from the same address: its budget (6 a minute; 4 taken) runs out next.
        others: list[httpx.Response] = []
        while len(others) < 10 and (not others or others[-1].status_code == 401):
            others.append(
                await http.post(
                    "/api/v1/auth/token", json={"reviewer": f"x{len(others)}", "password": "no"}
                )
            )
        # Two left, one more if a slow machine took more than 10 s to get here (refill).
        assert len(others) in (3, 4) and others[-1].status_code == 429
        assert "address" in others[-1].json()["detail"]
        for _ in range(20):
            await http.post("/api/v1/auth/token", json={"reviewer": "y", "password": "no"})
    # Every attempt that reached a password check is audited; the 22 throttled ones are
    # audited at the bounded rate (one row here, the rest counted into the next).
    checked = await console.sql(
        "SELECT count(*) AS n FROM audit WHERE action = 'login' AND outcome = 'denied'"
        " AND detail->>'why' IS NULL"
    )
    throttled = await console.sql(
        "SELECT count(*) AS n FROM audit WHERE action = 'login' AND outcome = 'denied'"
        " AND detail->>'why' LIKE 'throttled%'"
    )
    assert checked[0]["n"] == 3 + len(others) - 1
    assert 1 <= throttled[0]["n"] <= 2


async def test_past_the_in_flight_limits_requests_get_a_fast_refusal_and_healthz_answers(
    console: Console,
) -> None:
    await console.add_reviewer("alice", ("acme",))
    port = console.settings.review.port
    token = console.tokens["alice"]

    async def hold(authorised: bool) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
        """A request whose body never finishes: it holds its slot while the handler reads."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        auth_line = f"Authorization: Bearer {token}\r\n" if authorised else ""
        writer.write(
            (
                "POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"{auth_line}Content-Length: 100\r\n\r\n{{"
            ).encode()
        )
        await writer.drain()
        return writer, reader

    async with console.client("alice") as http, console.client() as stranger:
        held = [await hold(authorised=False), await hold(authorised=False)]
        await asyncio.sleep(0.3)
        # Both anonymous slots are taken: a stranger's login is refused at once (429)...
        login = await stranger.post("/api/v1/auth/token", json={"reviewer": "a", "password": "b"})
        assert login.status_code == 429 and login.headers["Retry-After"] == "1"
        # ...while a reviewer is still served.
        assert (await http.get("/api/v1/tags")).status_code == 200
        held.append(await hold(authorised=True))
        await asyncio.sleep(0.3)
        busy = await http.get("/api/v1/tags")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert busy.json()["detail"].startswith("server busy")
        assert (await stranger.get("/healthz")).status_code == 200
        assert (await stranger.get("/readyz")).status_code == 200
        for writer, _ in held:
            writer.close()
        await asyncio.sleep(0.3)
        assert (await http.get("/api/v1/tags")).status_code == 200


async def test_an_unknown_id_costs_the_same_hash_work_as_a_wrong_password(
    console: Console,
) -> None:
    await console.add_reviewer("alice", ("acme",))
    checked: list[str] = []

    def check(password: str, stored: str) -> bool:
        checked.append(stored)
        return auth.verify_password(password, stored)

    console.review.service.hashes = HashPool(1, 4, check=check)
    async with console.client() as http:
        known = await http.post("/api/v1/auth/token", json={"reviewer": "alice", "password": "x"})
        unknown = await http.post("/api/v1/auth/token", json={"reviewer": "zed", "password": "x"})
        good = await http.post(
            "/api/v1/auth/token", json={"reviewer": "alice", "password": PASSWORD}
        )
    assert known.status_code == unknown.status_code == 401
    assert known.json() == unknown.json()
    assert good.status_code == 200
    stored_alice, dummy, _ = checked
    assert dummy == UNKNOWN_ID_HASH
    # Same scheme and cost parameters, salt and digest of the same length: the same work.
    assert [len(p) if i >= 4 else p for i, p in enumerate(stored_alice.split("$"))] == [
        len(p) if i >= 4 else p for i, p in enumerate(dummy.split("$"))
    ]
    # A dummy hash never matches, whatever the password.
    assert not auth.verify_password("", UNKNOWN_ID_HASH)


async def test_a_full_hashing_pool_answers_429_at_once(console: Console) -> None:
    await console.add_reviewer("alice", ("acme",))
    release = threading.Event()
    hashing = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(password: str, stored: str) -> bool:
        loop.call_soon_threadsafe(hashing.set)
        release.wait(30)
        return False

    pool = HashPool(1, 0, check=slow)
    console.review.service.hashes = pool
    try:
        async with console.client() as http, console.client() as other:
            first = asyncio.create_task(
                http.post("/api/v1/auth/token", json={"reviewer": "alice", "password": "x"})
            )
            await asyncio.wait_for(hashing.wait(), 30)
            second = await other.post(
                "/api/v1/auth/token", json={"reviewer": "bob", "password": "x"}
            )
            assert second.status_code == 429 and second.headers["Retry-After"] == "1"
            assert second.json()["detail"].startswith("too many logins at once")
            release.set()
            assert (await first).status_code == 401
    finally:
        release.set()
        pool.close()


async def test_a_422_never_echoes_what_was_submitted(console: Console) -> None:
    secret = "hunter2-Z9q"
    async with console.client() as http:
        for body in (
            {"reviewer": "a\x00b", "password": secret},
            {"reviewer": "alice", "password": secret * 200},
            {"reviewer": ["alice"], "password": secret},
            {"reviewer": "alice", "password": [secret]},
        ):
            answer = await http.post("/api/v1/auth/token", json=body)
            assert answer.status_code == 422
            assert set(answer.json()) == {"detail", "field"}
            assert secret not in answer.text and "input" not in answer.json()
        surrogate = await http.post(
            "/api/v1/auth/token",
            content=json.dumps({"reviewer": "alice", "password": secret + "\ud800"}),
            headers={"Content-Type": "application/json"},
        )
        assert surrogate.status_code == 422 and secret not in surrogate.text
        assert surrogate.json()["field"] == "password"


# C0 and C1 controls, DEL and lone surrogates: what an id, a path or a query may not hold.
HOSTILE = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x1F),
    st.characters(min_codepoint=0x7F, max_codepoint=0x9F),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
)
PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="/?#%"))


@st.composite
def hostile_text(draw: st.DrawFn, bad: st.SearchStrategy[str] = HOSTILE) -> str:
    return draw(PLAIN) + draw(bad) + draw(PLAIN)


# A form decodes bytes that are not UTF-8 to U+FFFD (a character like any other): controls only.
CONTROLS = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x1F),
    st.characters(min_codepoint=0x7F, max_codepoint=0x9F),
)


async def test_control_characters_are_refused_with_422_before_the_database(
    console: Console,
) -> None:
    await console.add_reviewer("alice", ("acme",))
    base, token = console.base_url, console.tokens["alice"]
    seen: list[tuple[str, int]] = []

    @hsettings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        value=hostile_text(),
        control=hostile_text(CONTROLS),
    )
    def probe(value: str, control: str) -> None:
        quoted = quote(value.encode("utf-8", "surrogatepass"), safe="")
        for where in ("login", "path", "query", "form"):  # every place, whatever is drawn
            refused(where, value, quoted, control)

    def refused(where: str, value: str, quoted: str, control: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            if where == "login":
                answer = http.post(
                    "/api/v1/auth/token",
                    content=json.dumps({"reviewer": value, "password": "x"}),
                    headers={"Content-Type": "application/json"},
                )
            elif where == "path":
                answer = http.get(
                    f"/api/v1/tasks/{quoted}", headers={"Authorization": f"Bearer {token}"}
                )
            elif where == "query":
                answer = http.get(
                    f"/api/v1/queue?tenant={quoted}", headers={"Authorization": f"Bearer {token}"}
                )
            else:
                answer = http.post(
                    "/console/login",
                    content=f"reviewer={quote(control, safe='')}&password=x",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
        seen.append((where, answer.status_code))
        assert answer.status_code == 422, (where, answer.status_code, answer.text[:200])

    def run_probe() -> None:
        # The server runs on this event loop, so Hypothesis drives it from a thread; the
        # server's own use of `random` meanwhile is not the strategies' (Hypothesis warns).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HypothesisDeprecationWarning)
            probe()

    await asyncio.to_thread(run_probe)
    assert {w for w, _ in seen} == {"login", "path", "query", "form"}
    # Refusals are audited at the bounded rate: one row, not one per request.
    rows = await console.sql(
        "SELECT count(*) AS n FROM audit WHERE outcome = 'denied' AND actor IS NULL"
    )
    assert 1 <= rows[0]["n"] <= 3
    # Nothing reached the store: no task or queue read was audited for alice.
    reads = await console.sql(
        "SELECT count(*) AS n FROM audit WHERE actor = 'alice' AND action <> 'token.issue'"
    )
    assert reads[0]["n"] == 0


async def test_made_up_tokens_and_sessions_are_audited_at_the_bounded_rate(
    console: Console,
) -> None:
    # A stranger's refusals cost no audit row each: 40 requests without a token, with a
    # made-up one and without a session write one row (the rate here is 0.001/s, burst 1),
    # and that row's successor will carry the count of the rest.
    async with httpx.AsyncClient(base_url=console.base_url, timeout=30) as http:
        for n in range(40):
            headers = {"Authorization": f"Bearer made-up-{n}"} if n % 2 else {}
            assert (await http.get("/api/v1/queue", headers=headers)).status_code == 401
        for _ in range(10):
            assert (await http.post("/console/logout")).status_code in (401, 403)
    rows = await console.sql(
        "SELECT count(*) AS n FROM audit WHERE outcome = 'denied' AND actor IS NULL"
        " AND action IN ('api', 'console')"
    )
    assert rows[0]["n"] == 1
    assert console.review.service.refusals.suppressed == 49
