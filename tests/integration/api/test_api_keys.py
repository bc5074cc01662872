"""API keys against real parts: PostgreSQL keeps the keys (their hashes only), Redis the rate
limit, and `guardstream api` runs as a user runs it (its own OS process; the scorer's door is
closed and the pack fails closed, so a post is decided without a model). The gate answers
401 without a live key, 403 for another tenant, 429 past a key's rate and recovers; keys are
made and revoked with the CLI; no Authorization header or tenant makes it answer 5xx."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from guardstream.api import db
from guardstream.api.keys import Check, KeyRing, KeyStore, KeyStoreUnavailable, key_id_of
from guardstream.api.ratelimit import RateLimiter, gcra, interval_us
from guardstream.contracts.events import Decision, Verdict
from guardstream.devtools.stack import DEMO_KEY_FILE, ensure_demo_key
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from tests.conftest import free_port
from tests.integration.api.conftest import add_key, bearer, database_env
from tests.integration.cli.conftest import guardstream
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TEXT = "The weather is lovely today, let's go hiking."
PACKS = 'id: default\nversion: "1"\ntenants: ["*"]\nscorer_unavailable: fail_closed\n'


@asynccontextmanager
async def api_process(
    settings: Settings, tmp_path: Path, **extra: str
) -> AsyncIterator[tuple[Process, str]]:
    """`guardstream api` with no scorer behind it (a fail-closed pack decides)."""
    await ensure_topics(settings)
    (tmp_path / "packs.yaml").write_text(PACKS)
    port = free_port()
    env = env_for(
        settings,
        GUARDSTREAM_API_PORT=str(port),
        GUARDSTREAM_API_SCORER_URL=f"http://127.0.0.1:{free_port()}",  # nobody listens
        GUARDSTREAM_POLICY_DIR=str(tmp_path),
        **database_env(settings),
        **extra,
    )
    api = Process("api", env, tmp_path).start()
    try:
        await asyncio.to_thread(api.wait_ready, 120)
        yield api, f"http://127.0.0.1:{port}"
    finally:
        api.stop()


def status(api: Process) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{api.port}/status", timeout=2) as r:
        return dict(json.loads(r.read()))


def cli_env(settings: Settings) -> dict[str, str]:
    return database_env(settings)


async def test_keys_authenticate_callers_and_bind_them_to_their_tenant(
    settings: Settings, tmp_path: Path
) -> None:
    added = await guardstream(
        settings, "api", "add-key", "--tenant", "acme", "--name", "ci", env=cli_env(settings)
    )
    assert added.code == 0, added.stderr
    acme = added.lines[-1]  # the last line, as scripts read it
    assert acme.startswith("gsk_") and key_id_of(acme) is not None
    beta = await add_key(settings, "beta")
    async with (
        api_process(settings, tmp_path, GUARDSTREAM_API_KEY_CACHE_S="0.5") as (api, url),
        httpx.AsyncClient(base_url=url, timeout=60) as anonymous,
        httpx.AsyncClient(base_url=url, timeout=60, headers=bearer(acme)) as client,
    ):
        # Without a live key: 401, a reason, and the challenge.
        forged = acme[:-4] + ("0000" if not acme.endswith("0000") else "1111")
        unknown = "gsk_0123456789abcdef_" + "ab" * 32
        for headers, reason in [
            ({}, "missing_key"),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_key"),
            ({"Authorization": "Bearer not-a-key"}, "invalid_key"),
            (bearer(unknown), "invalid_key"),
            (bearer(forged), "invalid_key"),  # the right id, a wrong secret
        ]:
            for method, path in [("POST", "/v1/moderate"), ("GET", "/v1/decisions/p-1")]:
                answer = await anonymous.request(method, path, json={"text": TEXT}, headers=headers)
                assert answer.status_code == 401, (headers, path, answer.text)
                assert answer.json()["reason"] == reason
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")

        # The key's tenant is the request's when it names none, and the only one it may name.
        decided = await client.post("/v1/moderate", json={"text": TEXT, "post_id": "p-1"})
        assert decided.status_code == 200, decided.text
        assert Decision.from_json(decided.content).tenant == "acme"
        named = await client.post(
            "/v1/moderate", json={"text": TEXT, "post_id": "p-2", "tenant": "acme"}
        )
        assert Decision.from_json(named.content).tenant == "acme"
        for answer in [
            await client.post("/v1/moderate", json={"text": TEXT, "tenant": "beta"}),
            await client.post(
                "/v1/moderate/batch",
                json={"posts": [{"text": TEXT}, {"text": TEXT, "tenant": "beta"}]},
            ),
            await client.post(
                "/v1/moderations", json={"input": TEXT}, headers={"x-guardstream-tenant": "beta"}
            ),
            await client.get("/v1/decisions/p-1", params={"tenant": "beta"}),
        ]:
            assert answer.status_code == 403, answer.text
            assert answer.json()["reason"] == "forbidden_tenant"
        batch = await client.post("/v1/moderate/batch", json={"posts": [{"text": TEXT}]})
        assert batch.status_code == 200, batch.text
        assert batch.json()["results"][0]["decision"]["tenant"] == "acme"
        # acme's post is not beta's to read, whoever asks for it by id.
        seen = await anonymous.get("/v1/decisions/p-1", headers=bearer(beta))
        assert seen.status_code == 404, seen.text

        # The OpenAI SDK sends its api_key as the bearer token.
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=acme, max_retries=0) as sdk:
            result = await sdk.moderations.create(input=TEXT)
        assert result.results[0].flagged  # decided by the fail-closed pack: held for review
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError):
                await sdk.moderations.create(input=TEXT)

        # What stays open: the health port, the OpenAPI document.
        assert (await anonymous.get("/openapi.json")).status_code == 200

        # Revoked with the CLI: refused within GUARDSTREAM_API_KEY_CACHE_S.
        key_id = key_id_of(acme)
        assert key_id is not None
        revoked = await guardstream(settings, "api", "revoke-key", key_id, env=cli_env(settings))
        assert revoked.code == 0, revoked.stderr
        deadline = time.monotonic() + 10
        answer = await client.get("/v1/decisions/p-1")
        while answer.status_code != 401:
            assert answer.status_code in (200, 404), answer.text
            assert time.monotonic() < deadline, "the revoked key still works"
            await asyncio.sleep(0.1)
            answer = await client.get("/v1/decisions/p-1")
        assert answer.json()["reason"] == "revoked_key"
        counts = status(api)
        assert counts["gate_forbidden_tenant"] == 4 and counts["gate_revoked_key"] >= 1
        assert counts["gate_missing_key"] == 4 and counts["gate_invalid_key"] >= 6

    listed = await guardstream(settings, "api", "list-keys", env=cli_env(settings))
    assert listed.code == 0, listed.stderr
    assert key_id in listed.stdout and "revoked" in listed.stdout and "beta" in listed.stdout
    assert "gsk_" not in listed.stdout

    # Only hashes are stored: neither key, nor its secret, anywhere in the table.
    conn = await asyncpg.connect(settings.database.url.get_secret_value())
    try:
        await conn.execute(f'SET search_path TO "{settings.database.review_schema}"')
        rows = [r["row"] for r in await conn.fetch("SELECT t::text AS row FROM api_keys t")]
        hashes = {r["key_hash"] for r in await conn.fetch("SELECT key_hash FROM api_keys")}
    finally:
        await conn.close()
    assert len(rows) == 2
    for key in (acme, beta):
        secret = key.rsplit("_", 1)[1]
        assert not any(key in row or secret in row for row in rows)
        assert hashlib.sha256(key.encode()).hexdigest() in hashes


async def test_a_key_over_its_rate_is_answered_429_then_admitted_again(
    settings: Settings, tmp_path: Path
) -> None:
    # One request per 5 s after a burst of 3: the burst is spent long before it refills.
    key = await add_key(settings, "acme", rate_per_s=0.2, burst=3)
    other = await add_key(settings, "acme")  # keys are limited one by one
    async with (
        api_process(settings, tmp_path) as (api, url),
        httpx.AsyncClient(base_url=url, timeout=60, headers=bearer(key)) as client,
    ):
        answers = await asyncio.gather(*(client.get("/v1/decisions/p-1") for _ in range(6)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [404, 404, 404, 429, 429, 429], [a.text for a in answers]
        limited = next(a for a in answers if a.status_code == 429)
        assert limited.json()["reason"] == "rate_limited"
        wait = int(limited.headers["Retry-After"])
        assert 1 <= wait <= 5
        untouched = await client.get("/v1/decisions/p-1", headers=bearer(other))
        assert untouched.status_code == 404
        await asyncio.sleep(wait + 0.2)
        again = await client.get("/v1/decisions/p-1")
        assert again.status_code == 404, again.text
        assert status(api)["gate_rate_limited"] == 3


def authorizations(keys: list[str]) -> st.SearchStrategy[bytes | None]:
    """Authorization header values: the live key mangled, made-up keys, other schemes, bytes
    HTTP allows in a field (h11 refuses the rest before they are sent), very long ones."""
    field = st.binary(max_size=80).map(as_field)
    key = st.sampled_from(keys)
    return st.one_of(
        st.none(),
        field,
        st.builds(lambda k, p, s: p + k.encode() + s, key, field, field),
        st.builds(lambda k: b"Bearer " + k.encode(), key),
        st.builds(lambda k, n: b"Bearer " + k.encode()[:n], key, st.integers(0, 90)),
        st.builds(lambda k: b"bEaReR    " + k.upper().encode() + b"  ", key),
        st.builds(lambda s: b"Bearer gsk_" + s, field),
        st.just(b"Bearer " + b"gsk_" * 3000),
        st.just(b"Bearer \xff\xfe gsk_"),
    )


def as_field(raw: bytes) -> bytes:
    """What an HTTP field value may hold (h11 refuses to send anything else)."""
    return bytes(c for c in raw if c == 9 or 32 <= c != 127).strip(b" \t")


def tenants() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.sampled_from(["acme", "beta", "ACME", "acme ", "", "*", "default", "a" * 64]),
        st.text(st.characters(codec=None, categories=None), max_size=20),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.lists(st.just("acme"), max_size=2),
        st.dictionaries(st.just("tenant"), st.just("acme"), max_size=1),
    )


def draw(
    keys: list[str], routes: list[str], examples: int
) -> list[tuple[bytes | None, object, str]]:
    corpus: list[tuple[bytes | None, object, str]] = []

    @hypothesis_settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(
        authorizations(keys),
        tenants(),
        st.sampled_from(
            ["/v1/moderate", "/v1/moderate/batch", "/v1/moderations", "/v1/decisions/p"]
        ),
    )
    def collect(authorization: bytes | None, tenant: object, route: str) -> None:
        corpus.append((authorization, tenant, route))

    collect()
    return corpus


def as_header(value: object) -> bytes:
    """A tenant as a header or query value: its JSON when it is not text."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8", "surrogatepass")


async def test_no_authorization_or_tenant_makes_the_api_answer_5xx(
    settings: Settings, tmp_path: Path
) -> None:
    keys = [await add_key(settings, "acme", rate_per_s=10_000, burst=10_000)]
    keys.append(await add_key(settings, "beta", rate_per_s=10_000, burst=10_000))
    routes = ["/v1/moderate", "/v1/moderate/batch", "/v1/moderations", "/v1/decisions/p"]
    live = b"Bearer " + keys[0].encode()
    # Past the gate too: the live key with its own tenant or none, on every route.
    corpus = [(live, tenant, route) for route in routes for tenant in (None, "acme")]
    corpus += draw(keys, routes, 150)
    seen: dict[int, int] = {}
    async with (
        api_process(settings, tmp_path) as (_api, url),
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        for authorization, tenant, route in corpus:
            headers: dict[str, bytes] = {}
            if authorization is not None:
                headers["Authorization"] = as_field(authorization)
            if route == "/v1/decisions/p":
                params = (
                    {}
                    if tenant is None
                    else {"tenant": as_header(tenant).decode("utf-8", "replace")}
                )
                answer = await client.get(route, params=params, headers=headers)
            else:
                body: dict[str, object] = {"text": TEXT}
                if tenant is not None:
                    body["tenant"] = tenant
                payload: object = body
                if route == "/v1/moderate/batch":
                    payload = {"posts": [body]}
                elif route == "/v1/moderations":
                    payload = {"input": TEXT}
                    if tenant is not None:
                        headers["x-guardstream-tenant"] = as_field(as_header(tenant))
                answer = await client.post(
                    route,
                    content=json.dumps(payload).encode(),
                    headers={**headers, "Content-Type": b"application/json"},
                )
            assert answer.status_code < 500, (authorization, tenant, route, answer.text)
            assert answer.status_code in (200, 400, 401, 403, 404, 422), answer.text
            seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
    # The corpus reached every door of the gate, and past it.
    assert {401, 403} <= set(seen) and (seen.get(200, 0) + seen.get(404, 0)) > 0, seen


async def test_the_key_ring_caches_reads_for_its_ttl_and_says_when_the_store_is_away(
    settings: Settings,
) -> None:
    """In this process, over the real store with a clock the test moves."""
    now = [1000.0]
    pool = await db.connect(settings)
    store = KeyStore(pool)
    added, key = await store.add("acme", "ring")
    ring = KeyRing(store, ttl_s=5, clock=lambda: now[0])
    try:
        assert await ring.check(key) == added
        assert await ring.check(key + "0") is Check.INVALID
        assert await ring.check(None) is Check.MISSING
        await store.revoke(added.key_id)
        assert await ring.check(key) == added  # cached: the revocation is not seen yet
        now[0] += 5
        assert await ring.check(key) is Check.REVOKED  # seen once the entry is as old as its ttl
        # A new key works at once; the store away: what is cached still answers, nothing else.
        fresh, fresh_key = await store.add("acme")
        assert await ring.check(fresh_key) == fresh
    finally:
        await pool.close()
    assert await ring.check(fresh_key) == fresh
    other = "gsk_" + "f" * 16 + "_" + "a" * 64
    with pytest.raises(KeyStoreUnavailable):
        await ring.check(other)
    # Concurrent checks of one id while the store is away: each is told, none hangs.
    results = await asyncio.gather(*(ring.check(other) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, KeyStoreUnavailable) for r in results)


async def test_the_redis_script_is_the_python_rule(settings: Settings) -> None:
    """The Lua GCRA against `ratelimit.gcra`, on the same times (the script is given `now`)."""
    limiter = RateLimiter(settings)
    pool = await db.connect(settings)
    try:
        added, _ = await KeyStore(pool).add("acme", rate_per_s=4, burst=2)
        tat: int | None = None
        start = 1_700_000_000_000_000
        offsets = [0, 1, 2, 100_000, 250_000, 250_001, 500_000, 2_000_000, 2_000_001, 2_000_002]
        for offset in offsets:
            admission = await limiter.admit(added, now_us=start + offset)
            new_tat, wait = gcra(tat, start + offset, interval_us(4), 2)
            assert admission.allowed is (new_tat is not None), offset
            assert admission.checked
            if new_tat is not None:
                tat = new_tat
            else:
                assert admission.retry_after_s == max(1, -(-wait // 1_000_000))
    finally:
        await pool.close()
        await limiter.close()


async def test_auth_off_takes_the_tenant_from_the_body_and_only_on_the_loopback(
    settings: Settings, tmp_path: Path
) -> None:
    async with (
        api_process(settings, tmp_path, GUARDSTREAM_API_AUTH="off") as (_api, url),
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        answer = await client.post("/v1/moderate", json={"text": TEXT, "tenant": "beta"})
        assert answer.status_code == 200, answer.text
        assert Decision.from_json(answer.content).verdict is Verdict.CONTROVERSIAL
        assert Decision.from_json(answer.content).tenant == "beta"
    env = env_for(
        settings,
        GUARDSTREAM_API_AUTH="off",
        GUARDSTREAM_API_HOST="0.0.0.0",
        GUARDSTREAM_API_PORT=str(free_port()),
        **database_env(settings),
    )
    refused = Process("api", env, tmp_path).start()
    assert refused.wait(120) == 3
    assert "GUARDSTREAM_API_AUTH=off" in refused.log()


@pytest.mark.parametrize(
    "args",
    [
        ("add-key", "--tenant", "acme\x01"),
        ("add-key", "--tenant", "acme\udcff"),  # bytes that are no UTF-8 (\xff)
        ("add-key", "--tenant", "acme", "--name", "\x1b[31mred"),
        ("add-key", "--tenant", "acme", "--name", "n" * 100_000),
        ("add-key", "--tenant", "a" * 100_000),
        ("add-key", "--tenant", "acme", "--rate", "nan"),
        ("add-key", "--tenant", "acme", "--rate", "-1"),
        ("add-key", "--tenant", "acme", "--burst", "0"),
        ("add-key", "--tenant", "acme", "--rate", "fast"),
        ("revoke-key", "\x00" * 3 + "x"),
        ("revoke-key", "gsk_" + "z" * 100_000),
        ("list-keys", "--tenant", "\u202eacme"),
    ],
)
async def test_hostile_cli_arguments_exit_2_with_a_message(
    settings: Settings, args: tuple[str, ...]
) -> None:
    """NUL itself cannot reach a process's argv (execve ends an argument there), so the
    NUL case above is the text after it; the checks refuse NUL all the same (unit tests)."""
    args = tuple(a.replace("\x00", "") for a in args)
    ran = await guardstream(settings, "api", *args, env=cli_env(settings))
    assert ran.code == 2, (ran.code, ran.stdout[-500:], ran.stderr[-2000:])
    assert "Traceback" not in ran.stderr and ran.stderr.strip()
    assert "gsk_" not in ran.stdout


async def test_make_up_keeps_one_demo_key_while_it_works(
    settings: Settings, tmp_path: Path
) -> None:
    """`stack up`'s demo key: made once, kept in the run directory (owner only), the same on
    the next `up`, a new one once the kept one is revoked (or lost)."""
    key_file = tmp_path / DEMO_KEY_FILE
    first = await asyncio.to_thread(ensure_demo_key, settings, key_file)
    assert key_file.read_text().strip() == first and key_file.stat().st_mode & 0o777 == 0o600
    assert await asyncio.to_thread(ensure_demo_key, settings, key_file) == first
    pool = await db.connect(settings)
    try:
        store = KeyStore(pool)
        key_id = key_id_of(first)
        assert key_id is not None
        assert [k.tenant for k in await store.list()] == ["default"]
        await store.revoke(key_id)
        second = await asyncio.to_thread(ensure_demo_key, settings, key_file)
        assert second != first and key_file.read_text().strip() == second
        key_file.write_text("gsk_garbage\n")
        third = await asyncio.to_thread(ensure_demo_key, settings, key_file)
        assert third not in (first, second)
        assert len(await store.list("default")) == 3
    finally:
        await pool.close()
