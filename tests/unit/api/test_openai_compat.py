"""The OpenAI mapping and the API's framing, without I/O: every Qwen3Guard category lands on
its documented keys, `flagged` follows the pack's action, and a body becomes the post event
the stream would carry (or the contract's refusal)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from guardstream.api import openai_compat
from guardstream.api.protocol import post_event
from guardstream.contracts.events import ContractError, Decision, Post, Source, Verdict, utcnow
from guardstream.contracts.labels import CATEGORIES
from guardstream.policy import load_registry
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide

pytestmark = pytest.mark.unit

DOCS = Path(__file__).parents[3] / "docs" / "components" / "api.md"
PACK = load_registry(None).for_post("acme", None)


def decision(
    verdict: Verdict,
    categories: tuple[str, ...],
    confidence: float | None,
    source: Source = Source.MODEL,
) -> Decision:
    entry = CachedVerdict(
        verdict=verdict,
        categories=categories,
        confidence=confidence,
        reason="r",
        source=source,
        model="tiny",
        decided_at=utcnow(),
    )
    return decide(
        entry,
        Origin.MODEL,
        PACK,
        post_id="p",
        post_event_id="e",
        tenant="acme",
        content_key="0" * 32,
    )


def test_every_qwen3guard_category_has_its_keys_and_the_documented_table() -> None:
    assert set(openai_compat.CATEGORY_KEYS) == set(CATEGORIES)
    docs = DOCS.read_text(encoding="utf-8")
    for name, keys in openai_compat.CATEGORY_KEYS.items():
        assert f"| {name} | {', '.join(f'`{k}`' for k in keys)} |" in docs
        result = openai_compat.result(decision(Verdict.UNSAFE, (name,), 0.9))
        assert result.flagged
        assert {k for k, v in result.categories.items() if v} == set(keys)
        assert {k for k, v in result.category_scores.items() if v} == set(keys)
        assert all(result.category_scores[k] == 0.9 for k in keys)


def test_flagged_follows_the_packs_action_and_controversial_is_its_own_key() -> None:
    safe = openai_compat.result(decision(Verdict.SAFE, (), 0.99))
    assert not safe.flagged and not any(safe.categories.values())
    contested = openai_compat.result(decision(Verdict.CONTROVERSIAL, ("PII",), 0.8))
    assert contested.flagged  # the default pack reviews controversial content
    assert contested.categories[openai_compat.CONTROVERSIAL]
    human = openai_compat.result(decision(Verdict.UNSAFE, ("Violent",), None, Source.HUMAN))
    assert human.category_scores["violence"] == 1.0
    held = openai_compat.result(None)
    assert held.flagged and held.categories[openai_compat.ESCALATED]
    answer = openai_compat.response([decision(Verdict.SAFE, (), 0.9)], None)
    assert answer.model == "tiny" and answer.id.startswith("modr-")
    assert openai_compat.response([None], "omni").model == "omni"


def test_inputs_take_strings_arrays_and_text_parts_only() -> None:
    assert openai_compat.inputs({"input": "a"}, 4) == (["a"], None)
    parts = {"input": ["a", {"type": "text", "text": "b"}], "model": "m"}
    assert openai_compat.inputs(parts, 4) == (["a", "b"], "m")
    for bad in (
        {"input": []},
        {"input": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"input": ["a"] * 5},
        {"model": 3, "input": "a"},
        ["a"],
    ):
        with pytest.raises(ContractError) as caught:
            openai_compat.inputs(bad, 4)
        assert caught.value.reason == "invalid_schema"


def test_a_body_becomes_the_post_event_the_stream_would_carry() -> None:
    now = utcnow()
    post = Post.from_json(post_event({"text": "hi", "prompt": "q?", "tenant": "acme"}, now))
    assert (post.kind.value, post.prompt, post.tenant, post.text) == (
        "response",
        "q?",
        "acme",
        "hi",
    )
    again = Post.from_json(post_event({"text": "hi", "event_id": "e-1", "post_id": "p-1"}, now))
    assert (again.event_id, again.post_id, again.tenant) == ("e-1", "p-1", "default")
    with pytest.raises(ContractError) as caught:
        post_event({"text": "hi", "secret": 1, "\x00\u0099bad": 2}, now)
    assert caught.value.reason == "invalid_schema"
    # A client's text never reaches the DLQ record's detail (a hostile key once made it 500).
    assert caught.value.detail == "2 unknown field(s): secret"
    with pytest.raises(ContractError):
        Post.from_json(post_event({"text": 3}, now))  # the post contract judges the values
    assert orjson.loads(post_event({"text": "x"}, now))["author_id"] == "api-anonymous"
