"""API keys and the gate, without I/O: the key's shape and parsing, the Authorization header,
what `add-key` refuses, how a request's tenant is bound to its key's, and the GCRA rule the
Redis script implements (never more than the burst plus the rate, a full burst after idling)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.api.gate import Caller, TenantMismatch, guarded, loopback
from guardstream.api.keys import (
    ApiKey,
    KeyRequestInvalid,
    bearer_token,
    checked_key_id,
    checked_name,
    checked_rate,
    checked_tenant,
    key_hash,
    key_id_of,
    new_key,
)
from guardstream.api.ratelimit import gcra, interval_us, retry_after_s

pytestmark = pytest.mark.unit

ACME = ApiKey("0123456789abcdef", "acme", "", None, None, datetime.now(UTC), None)


def test_a_new_key_carries_its_id_and_256_random_bits() -> None:
    key_id, key = new_key()
    assert key.startswith(f"gsk_{key_id}_") and len(key.rsplit("_", 1)[1]) == 64
    assert key_id_of(key) == key_id
    assert new_key() != new_key()
    assert key_hash(key) == hashlib.sha256(key.encode()).hexdigest()


@given(st.text(max_size=120))
def test_only_a_well_formed_key_has_an_id(text: str) -> None:
    found = key_id_of(text)
    assert found is None or (text.startswith(f"gsk_{found}_") and len(text) == 85)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer " + "a" * 300, None),  # longer than any key: refused unread
    ],
)
def test_the_bearer_token_of_an_authorization_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "call",
    [
        lambda: checked_tenant("Acme"),
        lambda: checked_tenant(""),
        lambda: checked_tenant("a\x00"),
        lambda: checked_tenant("a" * 64),
        lambda: checked_tenant("\ud800"),
        lambda: checked_name("a\x00b"),
        lambda: checked_name("a\nb"),
        lambda: checked_name("\ud800"),
        lambda: checked_name("x" * 101),
        lambda: checked_rate(0, None),
        lambda: checked_rate(-1, None),
        lambda: checked_rate(float("nan"), None),
        lambda: checked_rate(float("inf"), None),
        lambda: checked_rate(None, 0),
        lambda: checked_rate(None, 10**7),
        lambda: checked_key_id("0123456789ABCDEF"),
        lambda: checked_key_id("0123"),
        lambda: checked_key_id("\x00" * 16),
    ],
)
def test_what_add_key_refuses(call: object) -> None:
    with pytest.raises(KeyRequestInvalid):
        call()  # type: ignore[operator]


def test_what_add_key_accepts() -> None:
    assert checked_tenant("acme-eu_1") == "acme-eu_1"
    assert checked_name("") == "" and checked_name("CI bot — prod") == "CI bot — prod"
    checked_rate(0.5, 1)
    checked_rate(None, None)
    assert checked_key_id("0123456789abcdef") == "0123456789abcdef"


def test_a_key_answers_for_its_tenant_only() -> None:
    caller = Caller(ACME)
    assert caller.tenant_for(None) == "acme"
    assert caller.tenant_for("acme") == "acme"
    for other in ("beta", "ACME", "", "acme "):
        with pytest.raises(TenantMismatch):
            caller.tenant_for(other)
    assert caller.bind({"text": "x"}) == {"text": "x", "tenant": "acme"}
    assert caller.bind({"text": "x", "tenant": None}) == {"text": "x", "tenant": "acme"}
    same = {"text": "x", "tenant": "acme"}
    assert caller.bind(same) is same
    for other_value in ("beta", 5, ["acme"], {"tenant": "acme"}):
        with pytest.raises(TenantMismatch):
            caller.bind({"text": "x", "tenant": other_value})
    assert caller.bind(["not", "an", "object"]) == ["not", "an", "object"]  # the contract's


def test_a_raw_body_is_passed_on_as_it_came_unless_the_tenant_is_filled_in() -> None:
    caller = Caller(ACME)
    named = orjson.dumps({"text": "x", "tenant": "acme"})
    assert caller.bind_raw(named) is named
    assert caller.bind_raw(b"{not json") == b"{not json"
    assert caller.bind_raw(b'{"text": "x"}') == {"text": "x", "tenant": "acme"}
    with pytest.raises(TenantMismatch):
        caller.bind_raw(b'{"text": "x", "tenant": "beta"}')


def test_with_auth_off_the_caller_names_the_tenant() -> None:
    caller = Caller(None)
    assert caller.tenant is None
    assert caller.tenant_for(None) == "default" and caller.tenant_for("beta") == "beta"
    raw = b'{"text": "x", "tenant": "beta"}'
    assert caller.bind_raw(raw) is raw
    assert caller.bind({"tenant": "beta"}) == {"tenant": "beta"}


def test_the_gate_guards_v1_and_only_v1() -> None:
    assert guarded("/v1") and guarded("/v1/moderate") and guarded("/v1/decisions/x")
    assert not guarded("/") and not guarded("/openapi.json") and not guarded("/v10/x")
    assert loopback("127.0.0.1") and loopback("::1") and loopback("localhost")
    assert not loopback("0.0.0.0") and not loopback("10.0.0.1") and not loopback("example.org")


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.integers(min_value=0, max_value=3_000_000), min_size=1, max_size=60),
)
def test_gcra_never_admits_more_than_the_burst_plus_the_rate(
    rate: float, burst: int, gaps: list[int]
) -> None:
    interval = interval_us(rate)
    tat: int | None = None
    now = 10**15
    admitted: list[int] = []
    for gap in gaps:
        now += gap
        new_tat, wait = gcra(tat, now, interval, burst)
        if new_tat is None:
            assert wait > 0 and retry_after_s(wait) >= 1
            # Admitted once the wait is over.
            assert gcra(tat, now + wait, interval, burst)[0] is not None
        else:
            assert wait == 0
            tat = new_tat
            admitted.append(now)
    # In every window, at most the burst plus one per interval elapsed.
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + (admitted[j] - start) // interval


def test_gcra_admits_a_full_burst_after_idling_and_then_one_per_interval() -> None:
    interval, burst = interval_us(2), 3  # 500 ms
    tat: int | None = None
    now = 10**15
    for _ in range(burst):
        tat, wait = gcra(tat, now, interval, burst)
        assert tat is not None and wait == 0
    refused, wait = gcra(tat, now, interval, burst)
    assert refused is None and wait == interval
    assert retry_after_s(wait) == 1 and retry_after_s(1) == 1 and retry_after_s(1_000_001) == 2
    assert gcra(tat, now + interval, interval, burst)[0] is not None
    idle = now + burst * interval + 10_000_000
    for _ in range(burst):
        tat, wait = gcra(tat, idle, interval, burst)
        assert tat is not None
