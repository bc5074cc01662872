"""Scorer and triage logic with the engine replaced: the one place a fake engine is right,
because a real one cannot be made to emit garbage on demand."""

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest

from guardstream.contracts.events import ContractError, Kind, ScoreRequest, Source, Verdict, utcnow
from guardstream.contracts.text import content_key, key_context
from guardstream.model.adapters import Adapter
from guardstream.policy import PolicyPack, PolicyRegistry, load_registry, prompt_fingerprint
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import RawAnswer
from guardstream.scorer.prompt import messages_for
from guardstream.scorer.service import Scorer
from guardstream.verdict.cache import VerdictKey
from guardstream.verdict.intake import (
    Triaged,
    Triager,
    score_request,
    score_request_json,
    triage_record,
)
from guardstream.verdict.neardup import near_scope
from guardstream.verdict.stores import Stores

pytestmark = pytest.mark.unit

POLICIES = load_registry(None)


class ScriptedEngine:
    """Answers every request with the same scripted text."""

    def __init__(
        self,
        text: str,
        label_logprobs: dict[str, float | None] | None = None,
        *,
        truncated: bool = False,
    ) -> None:
        self.text = text
        self.label_logprobs = label_logprobs or {}
        self.truncated = truncated  # the engine shortened the conversation to fit its window
        self.calls = 0

    @property
    def model_id(self) -> str:
        return "scripted"

    @property
    def alive(self) -> bool:
        return True

    async def assess(
        self,
        messages: Sequence[dict[str, str]],
        request_id: str,
        adapter: Adapter | None = None,
    ) -> RawAnswer:
        self.calls += 1
        return RawAnswer(self.text, self.label_logprobs, truncated=self.truncated)  # type: ignore[arg-type]

    async def close(self) -> None:
        pass


def request() -> ScoreRequest:
    return ScoreRequest(
        event_id="e",
        produced_at=utcnow(),
        post_id="p",
        post_event_id="e",
        tenant="t",
        kind=Kind.PROMPT,
        text="x",
        content_key="0" * 32,
        policy="p",
        received_at=utcnow(),
    )


def scorer(engine: ScriptedEngine) -> Scorer:
    stores = Stores(cache=None, journal=None, near=None, policies=POLICIES)  # type: ignore[arg-type]
    return Scorer(Settings(_env_file=None), None, stores, engine)  # type: ignore[arg-type,call-arg]


@pytest.mark.parametrize("garbage", ["", "Safety: Safe\nSafety: Unsafe", "lorem ipsum", "Safety:"])
async def test_unusable_output_is_controversial_never_safe(garbage: str) -> None:
    s = scorer(ScriptedEngine(garbage))
    scored = await s.score(request())
    assert scored.verdict is Verdict.CONTROVERSIAL
    assert scored.confidence is None
    assert "unusable" in scored.reason
    assert s.counts["unparseable"] == 1


async def test_model_verdict_carries_confidence_and_categories() -> None:
    lp = {"Safe": math.log(0.05), "Unsafe": math.log(0.9), "Controversial": math.log(0.05)}
    scored = await scorer(ScriptedEngine("Safety: Unsafe\nCategories: Violent", lp)).score(
        request()
    )
    assert scored.verdict is Verdict.UNSAFE
    assert scored.categories == ("Violent",)
    assert scored.confidence == pytest.approx(0.9)
    assert scored.source is Source.MODEL
    assert scored.reason == "Qwen3Guard: Unsafe [Violent]"


@pytest.mark.parametrize("truncated", [True, False])
async def test_the_verdict_says_whether_the_model_saw_a_shortened_text(truncated: bool) -> None:
    s = scorer(ScriptedEngine("Safety: Unsafe\nCategories: Violent", truncated=truncated))
    scored = await s.score(request())
    assert scored.input_truncated is truncated
    assert s.counts["truncated"] == int(truncated)


def post(**fields: object) -> bytes:
    doc = {
        "schema_version": "1.0",
        "event_id": "e1",
        "produced_at": "2026-11-22T10:00:00Z",
        "post_id": "p1",
        "tenant": "acme",
        "author_id": "a1",
        "text": "Hello  world",
        "created_at": "2026-11-22T10:00:00Z",
        **fields,
    }
    return orjson.dumps(doc)


def triaged(raw: bytes | None) -> Triaged:
    return triage_record(raw, max_text_chars=100, model="m", adapter=None, policies=POLICIES)


def test_triage_keys_normalised_text() -> None:
    a = triaged(post(text="Ｈｅｌｌｏ\u200b world"))
    b = triaged(post(text="Hello world"))
    assert a.text == "Hello world"
    assert a.content_key == b.content_key
    assert a.pack.ref == "default@1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "invalid_json"),
        (b"\x00\x01", "invalid_json"),
        (post(text="x" * 101), "text_too_long"),
        (post(text="\u200b\u200b \n"), "empty_text"),
        (post(schema_version="9.0"), "unsupported_schema_version"),
        (post(kind="response"), "invalid_schema"),
    ],
)
def test_triage_rejects_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        triaged(raw)
    assert info.value.reason == reason


def test_response_moderation_key_includes_the_prompt() -> None:
    a = triaged(post(kind="response", prompt="q1", text="ok"))
    b = triaged(post(kind="response", prompt="q2", text="ok"))
    assert a.prompt == "q1"
    assert a.content_key != b.content_key


def test_a_pack_that_changes_the_prompt_changes_the_key_and_the_request() -> None:
    plain = triaged(post(tenant="acme"))
    health = triaged(post(tenant="health-forum"))
    assert health.pack.ref.startswith("health-forum@")
    assert plain.content_key != health.content_key  # the model sees different input
    request = score_request(health, near_duplicates=True)
    assert request.prompt_prefix == "[领域:公共卫生][敏感类型:污名化]"
    assert request.policy == health.pack.ref
    assert request.near_scope == health.near_scope
    assert messages_for(request)[0]["content"] == "[领域:公共卫生][敏感类型:污名化] Hello world"
    assert score_request(health, near_duplicates=False).near_scope is None


def test_keys_worked_out_once_per_pack_are_the_content_keys_of_each_post() -> None:
    triager = Triager(
        max_text_chars=100, model="m", adapter_for=lambda _tenant: "lora", policies=POLICIES
    )
    for raw in (
        post(text="first"),
        post(text="second"),  # the pack's key context again, remembered
        post(tenant="health-forum", text="second"),
        post(kind="response", prompt="q?", text="second"),
    ):
        item = triager.triage(raw)
        expected = {
            "kind": item.post.kind.value,
            "prompt": item.prompt,
            "model": "m",
            "adapter": "lora",
            "prompt_policy": prompt_fingerprint(item.pack),
        }
        assert item.content_key == content_key(item.text, **expected)
        assert item.near_scope == near_scope(key_context(**expected), item.post.tenant)
        assert item.verdict_key == VerdictKey(item.content_key, item.post.tenant, shared=False)


def test_near_scope_is_shared_by_texts_and_split_by_everything_else() -> None:
    assert triaged(post(text="one text")).near_scope == triaged(post(text="another")).near_scope
    assert triaged(post()).near_scope != triaged(post(tenant="health-forum")).near_scope
    assert triaged(post()).near_scope != triaged(post(kind="response", prompt="q")).near_scope


SHARING = PolicyRegistry(
    [PolicyPack(id="pool", version="1", tenants=("*",), share_model_verdicts=True)]
)


@pytest.mark.parametrize("prompt", [None, "q?"])
def test_tenants_share_verdicts_and_near_scopes_only_under_a_sharing_pack(
    prompt: str | None,
) -> None:
    kind = "prompt" if prompt is None else "response"
    for policies, shared in ((POLICIES, False), (SHARING, True)):
        triager = Triager(
            max_text_chars=100, model="m", adapter_for=lambda _t: None, policies=policies
        )
        acme, beta = (
            triager.triage(post(tenant=tenant, kind=kind, prompt=prompt))
            for tenant in ("acme", "beta")
        )
        assert acme.content_key == beta.content_key  # the model sees the same input
        assert acme.verdict_key == VerdictKey(acme.content_key, "acme", shared)
        assert beta.verdict_key == VerdictKey(acme.content_key, "beta", shared)
        assert (acme.near_scope == beta.near_scope) is shared
        again = triager.triage(post(tenant="acme", kind=kind, prompt=prompt, text="other"))
        assert again.near_scope == acme.near_scope  # remembered per tenant, still the same


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 11, 26, 1, 2, 3, 456789, UTC),
        datetime(2026, 11, 26, 1, 2, 3, 0, UTC),  # no microseconds: none written
        datetime(2026, 11, 26, 1, 2, 3, 10, UTC),
    ],
)
def test_the_score_request_triage_sends_is_the_models_json_byte_for_byte(now: datetime) -> None:
    triager = Triager(
        max_text_chars=100,
        model="m",
        adapter_for=lambda tenant: "lora-1" if tenant == "acme" else None,
        policies=POLICIES,
    )
    raws = [
        post(),  # lang, region, prompt, prefix absent
        post(tenant="beta", text="你好，世界！这是一条中文帖子。", lang="zh", region="cn"),
        post(tenant="health-forum", text='quote " back\\slash \u2028 tab\t'),  # a prompt prefix
        post(kind="response", prompt="Ｑ\u200b: what?", text="an answer", event_id="e" * 128),
    ]
    for raw in raws:
        item = triager.triage(raw)
        for near in (True, False):
            request = score_request(item, near_duplicates=near, now=now)
            sent = score_request_json(item, near_duplicates=near, now=now)
            assert sent == request.to_json()
            assert ScoreRequest.model_validate_json(sent) == request
