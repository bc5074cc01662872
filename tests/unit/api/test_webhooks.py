"""Decision callbacks, the pure part: the signature a receiver can check with the documented
ten lines, the retry schedule, and the URLs a tenant may not register (SSRF)."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.api.webhooks import (
    SECRET_PREFIX,
    address_problem,
    backoff_s,
    new_secret,
    pinned,
    signature,
    url_problem,
    verify,
)
from tests.support.hostile_urls import url_with_secrets
from tests.support.webhook_docs import documented_verifier

pytestmark = pytest.mark.unit


documented_check = documented_verifier()


@given(st.text(min_size=1, max_size=64), st.binary(max_size=512), st.integers(-200, 200))
def test_a_signature_is_what_the_documented_check_recomputes(
    secret: str, body: bytes, skew: int
) -> None:
    at = int(time.time()) + skew
    header = signature(secret, body, at)
    assert header.startswith(f"t={at},v1=")
    assert documented_check(secret, body, header)
    assert verify(secret, body, header, now=at + 299)
    assert not documented_check(secret, body + b"x", header)
    assert not documented_check(secret + "x", body, header)
    assert not documented_check(secret, body, signature(secret, body, at - 1000))  # stale


@given(st.binary(min_size=1, max_size=256), st.integers(1_000_000, 2**40))
def test_any_change_to_body_secret_or_time_breaks_the_signature(body: bytes, at: int) -> None:
    secret = "whsec_fixed"
    header = signature(secret, body, at)
    assert not verify(secret, body + b" ", header, now=at)
    assert not verify(secret, body[:-1], header, now=at)
    assert not verify("whsec_other", body, header, now=at)
    assert not verify(secret, body, header.replace(f"t={at}", f"t={at + 1}"), now=at)
    assert not verify(secret, body, header, now=at + 301)  # a replay, too late
    assert not verify(secret, body, "v1=00", now=at)
    assert not verify(secret, body, "", now=at)


def test_secrets_are_fresh_and_long() -> None:
    made = {new_secret() for _ in range(50)}
    assert len(made) == 50
    assert all(s.startswith(SECRET_PREFIX) and len(s) >= len(SECRET_PREFIX) + 40 for s in made)


@given(
    st.integers(1, 200),
    st.floats(0.001, 100),
    st.floats(0.001, 10_000),
    st.integers(0, 2**32),
)
def test_backoff_doubles_up_to_its_cap_with_jitter(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    nominal = min(cap, base * 2.0 ** (attempt - 1)) if attempt < 1000 else cap
    wait = backoff_s(attempt, base, cap, random.Random(seed))
    assert nominal * 0.5 <= wait <= nominal


def test_backoff_schedule_by_attempt() -> None:
    lows = [backoff_s(n, 5, 60, random.Random(0)) for n in range(1, 8)]
    highs = [5, 10, 20, 40, 60, 60, 60]
    assert all(h / 2 <= w <= h for w, h in zip(lows, highs, strict=True))
    spread = {round(backoff_s(3, 5, 60), 6) for _ in range(20)}
    assert len(spread) > 1, "jitter: retries that failed together do not come back together"


ACCEPTED = [
    "https://example.com/hooks/guardstream",
    "http://hooks.example.org:8443/x?tenant=a&sig=1",
    "https://xn--bcher-kva.example/hook",
    "https://bücher.example/hook",
    "https://8.8.8.8/hook",
    "https://[2001:4860:4860::8888]/hook",
]
REFUSED = {
    "ftp://example.com/hook": "scheme",
    "javascript:alert(1)": "scheme",
    "file:///etc/passwd": "scheme",
    "example.com/hook": "scheme",
    "": "scheme",
    "http://user:pw@example.com/hook": "credentials",
    "https://token@example.com/": "credentials",
    "http://example.com/hook#frag": "fragment",
    "http:///hook": "host",
    "http://exa mple.com/": "spaces",
    "http://example.com/\x00": "control",
    "http://example.com/\u202e": "",
    "http://example.com:99999/": "parse",
    "http://[zz]/": "parse",
    "http://example.com:0/": "port",
    "https://example.com/" + "a" * 3000: "characters",
    "http://127.0.0.1/": "loopback",
    "http://127.1/": "loopback",
    "http://2130706433/": "loopback",
    "http://0x7f000001/": "loopback",
    "http://0177.0.0.1/": "loopback",
    "http://[::1]:8080/": "loopback",
    "http://[::ffff:127.0.0.1]/": "loopback",
    "http://localhost:8080/": "localhost",
    "http://LOCALHOST./": "localhost",
    "http://api.localhost/": "localhost",
    "http://10.1.2.3/": "private",
    "http://192.168.0.1/": "private",
    "http://172.16.0.1/": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://[fe80::1]/": "link-local",
    "http://[fd00::1]/": "private",
    "http://0.0.0.0/": "",
    "http://100.64.0.1/": "",
    "http://224.0.0.1/": "multicast",
    "http://255.255.255.255/": "",
}


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_http_urls_are_accepted(url: str) -> None:
    assert url_problem(url, allow_private=False) is None


@pytest.mark.parametrize(("url", "why"), sorted(REFUSED.items()))
def test_unsafe_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    problem = url_problem(url, allow_private=False)
    assert problem is not None, url
    assert why in problem, problem


def test_private_addresses_only_when_allowed_and_never_credentials() -> None:
    assert url_problem("http://127.0.0.1:9000/hook", allow_private=True) is None
    assert url_problem("http://localhost/hook", allow_private=True) is None
    assert url_problem("http://u:p@127.0.0.1/hook", allow_private=True) is not None
    assert url_problem("gopher://127.0.0.1/", allow_private=True) is not None


@given(url_with_secrets(schemes=("http", "https"), hosts=("example.com", "8.8.8.8", "[::1]")))
def test_a_url_with_credentials_is_refused_and_the_reason_quotes_none_of_them(
    drawn: tuple[str, list[str]],
) -> None:
    url, hidden = drawn
    problem = url_problem(url, allow_private=False)
    if "@" in url.split("//", 1)[1].split("/", 1)[0] or "[::1]" in url:
        assert problem is not None, url
    for secret in hidden:
        assert problem is None or secret not in problem


@given(st.text(max_size=300))
def test_no_text_makes_the_check_raise(text: str) -> None:
    for candidate in (text, f"https://{text}", f"http://example.com/{text}"):
        problem = url_problem(candidate, allow_private=False)
        assert problem is None or isinstance(problem, str)


def test_resolved_addresses_are_judged_each() -> None:
    public = ipaddress.ip_address("93.184.216.34")
    assert address_problem([public]) is None
    assert address_problem([public, ipaddress.ip_address("10.0.0.7")]) is not None
    assert address_problem([ipaddress.ip_address("::ffff:169.254.169.254")]) is not None


@pytest.mark.parametrize(
    ("url", "address", "sent_to", "host", "sni"),
    [
        (
            "https://hooks.example.com/x?y=1",
            "93.184.216.34",
            "https://93.184.216.34/x?y=1",
            "hooks.example.com",
            "hooks.example.com",
        ),
        (
            "http://Hooks.Example.com:8080/x",
            "93.184.216.34",
            "http://93.184.216.34:8080/x",
            "hooks.example.com:8080",
            None,
        ),
        (
            "https://bücher.example/h",
            "2001:db8::1",
            "https://[2001:db8::1]/h",
            "xn--bcher-kva.example",
            "xn--bcher-kva.example",
        ),
        (
            "http://[2001:db8::2]:81/",
            "2001:db8::2",
            "http://[2001:db8::2]:81/",
            "[2001:db8::2]:81",
            None,
        ),
    ],
)
def test_a_request_is_pinned_to_the_address_judged_and_keeps_its_host(
    url: str, address: str, sent_to: str, host: str, sni: str | None
) -> None:
    pin = pinned(url, ipaddress.ip_address(address))
    assert (pin.url, pin.host, pin.sni) == (sent_to, host, sni)
