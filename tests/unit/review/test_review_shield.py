"""The review edge's small pieces on a fake clock: token buckets refill and stay bounded, the
login throttle charges the address before the id, IPv6 addresses share a /64, the refusal audit
is rate-bounded and counts what it skipped, and the character rules (Hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.review.shield import (
    Buckets,
    DeniedAudit,
    LoginThrottle,
    Throttled,
    address_key,
    free_text,
    identifier,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_tells_how_long_to_wait() -> None:
    clock = Clock()
    buckets = Buckets(burst=3, per_s=0.5, max_keys=10, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)
    clock.now = 1.0
    assert buckets.take("a") == pytest.approx(1.0)  # half a token back, half to wait
    clock.now = 3.0
    assert buckets.take("a") == 0.0
    clock.now = 1000.0  # refills to the burst, never past it
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_buckets_keep_at_most_max_keys_dropping_the_least_recently_used() -> None:
    clock = Clock()
    buckets = Buckets(burst=1, per_s=0.01, max_keys=100, clock=clock)
    buckets.take("kept")
    for i in range(10_000):
        buckets.take(f"junk{i}")
        if i % 50 == 0:
            buckets.take("kept")  # still in use: never the one dropped
    assert len(buckets) == 100
    assert buckets.take("kept") > 0  # its empty bucket was remembered


def test_the_throttle_refuses_by_id_and_by_address_with_a_retry_after() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_id_per_min=2, per_address_per_min=4, max_keys=100, clock=clock)
    throttle.admit("alice", "10.0.0.1")
    throttle.admit("alice", "10.0.0.2")
    with pytest.raises(Throttled) as by_id:
        throttle.admit("alice", "10.0.0.3")
    assert by_id.value.scope == "reviewer" and by_id.value.retry_after == 30
    throttle.admit("bob", "10.0.0.1")
    throttle.admit("carol", "10.0.0.1")
    throttle.admit("erin", "10.0.0.1")  # the address's 4th
    with pytest.raises(Throttled) as by_address:
        throttle.admit("dave", "10.0.0.1")
    assert by_address.value.scope == "address"
    # Refused by its address, dave's own budget was not charged.
    clock.now = 15.0
    throttle.admit("dave", "10.0.0.9")
    throttle.admit("dave", "10.0.0.9")


def test_ipv6_addresses_of_one_host_share_a_budget() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key(None) == "?"


async def test_refusals_are_audited_at_a_bounded_rate_and_the_rest_counted() -> None:
    clock = Clock()
    rows: list[dict[str, Any]] = []

    async def write(**fields: Any) -> None:
        rows.append(fields)

    audit = DeniedAudit(write, per_s=1.0, clock=clock)
    for _ in range(50):
        await audit.record("login", {"why": "throttled"})
    assert len(rows) == 1 and audit.suppressed == 49
    clock.now = 1.0
    await audit.record("login", {"why": "throttled"})
    assert rows[-1]["detail"] == {"why": "throttled", "suppressed": 49}
    assert rows[-1]["actor"] is None and rows[-1]["outcome"] == "denied"


CONTROL = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x1F),
    st.characters(min_codepoint=0x7F, max_codepoint=0x9F),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
)


@given(st.text(), CONTROL, st.text())
def test_an_identifier_with_any_control_character_is_refused(
    before: str, bad: str, after: str
) -> None:
    with pytest.raises(ValueError, match="control characters"):
        identifier(before + bad + after)


@given(st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cc", "Cs"])))
def test_printable_text_passes_both_rules_unchanged(text: str) -> None:
    assert identifier(text) == text
    assert free_text(text + "\n\t" + text) == text + "\n\t" + text
