"""`POST /api/v1/admin/erasures` with generated bodies: every field hostile (NUL, controls,
lone surrogates, over-long ids, too many ids, another tenant). Each answer is the 4xx its
contract names (403: not this admin's tenant; 422: the field and the reason) or, for a valid
dry run, the receipt; never a 5xx, and nothing is removed."""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from guardstream.review.logic import Role
from guardstream.verdict.erasure import MAX_POSTS
from tests.integration.review.conftest import Console

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

IDS = st.one_of(
    st.text(max_size=12),  # NUL, controls, lone surrogates among them
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=120, max_size=140),
    st.sampled_from(["p-1", "author-x", "\x00", "\ud800", "a\x1b[2Jb", ""]),
)
TENANTS = st.one_of(st.sampled_from(["acme", "beta", "ACME", "acme\x00", "", "*"]), st.text())
BODIES = st.fixed_dictionaries(
    {"tenant": TENANTS},
    optional={
        "post_ids": st.one_of(
            st.lists(IDS, max_size=4), st.just([f"p{i}" for i in range(MAX_POSTS + 1)])
        ),
        "author_id": IDS,
    },
)


async def test_generated_erasure_requests_are_answered_by_contract_never_a_5xx(
    console: Console,
) -> None:
    await console.add_reviewer("root", ("acme",), Role.ADMIN)
    base, token = console.base_url, console.tokens["root"]
    seen: set[int] = set()

    @hsettings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=BODIES)
    @example(body={"tenant": "acme", "author_id": "author-x"})  # 200: the dry run's receipt
    @example(body={"tenant": "beta", "author_id": "author-x"})  # 403: another tenant's
    @example(body={"tenant": "acme", "author_id": "a\x00b"})  # 422: NUL
    @example(body={"tenant": "acme", "post_ids": ["\ud800"]})  # 422: a lone surrogate
    @example(body={"tenant": "acme", "post_ids": ["p"] * (MAX_POSTS + 1)})  # 422: too many
    @example(body={"tenant": "acme", "post_ids": ["p"], "author_id": "a"})  # 422: both
    @example(body={"tenant": "acme"})  # 422: neither
    def probe(body: dict[str, Any]) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            answer = http.post(
                "/api/v1/admin/erasures",
                # As bytes: JSON escapes (\u0000, \ud800) reach the server as they are.
                content=json.dumps({**body, "dry_run": True}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        seen.add(answer.status_code)
        assert answer.status_code in {200, 403, 422}, (body, answer.status_code, answer.text)
        if answer.status_code == 422:
            assert answer.json()["detail"]
        if answer.status_code == 200:
            assert body["tenant"] == "acme"
            assert all(s["removed"] == 0 for s in answer.json()["stores"])
        elif body["tenant"] != "acme" and answer.status_code == 403:
            pass  # not this admin's tenant, whatever else the body holds
        else:
            assert answer.status_code == 422, (body, answer.text)

    def run_probe() -> None:
        # The server runs on this event loop, so Hypothesis drives it from a thread.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HypothesisDeprecationWarning)
            probe()

    await asyncio.to_thread(run_probe)
    assert {200, 403, 422} <= seen
