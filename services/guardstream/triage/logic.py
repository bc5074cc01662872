"""Triage decisions as pure functions: a raw record becomes a rejection or a keyed post."""

from __future__ import annotations

from dataclasses import dataclass

from guardstream.core.content import content_key, normalise
from guardstream.core.contracts import ContractError, Kind, Post, ScoreRequest, utcnow
from guardstream.policy import PolicyPack, PolicyRegistry, prompt_fingerprint, prompt_prefix


@dataclass(frozen=True, slots=True)
class Triaged:
    post: Post
    pack: PolicyPack
    text: str  # normalised
    prompt: str | None  # normalised
    content_key: str
    # Everything in the content key but the text: near-duplicates are only sought within it.
    near_scope: str


def triage_record(
    raw: bytes | None,
    *,
    max_text_chars: int,
    model: str,
    adapter: str | None,
    policies: PolicyRegistry,
) -> Triaged:
    """Validate and key one post; raises `ContractError` (→ DLQ) when it cannot be used."""
    post = Post.from_json(raw)
    if len(post.text) > max_text_chars:
        raise ContractError(
            "text_too_long", f"text has {len(post.text)} characters, limit {max_text_chars}"
        )
    if post.prompt is not None and len(post.prompt) > max_text_chars:
        raise ContractError(
            "text_too_long", f"prompt has {len(post.prompt)} characters, limit {max_text_chars}"
        )
    text = normalise(post.text)
    if not text:
        raise ContractError("empty_text", "text is empty after normalisation")
    prompt = normalise(post.prompt) if post.kind is Kind.RESPONSE and post.prompt else None
    pack = policies.for_post(post.tenant, post.region)
    fingerprint = prompt_fingerprint(pack)

    def key(of: str) -> str:
        return content_key(
            of,
            kind=post.kind.value,
            prompt=prompt,
            model=model,
            adapter=adapter,
            prompt_policy=fingerprint,
        )

    return Triaged(post, pack, text, prompt, key(text), near_scope=key(""))


def score_request(item: Triaged, *, near_duplicates: bool) -> ScoreRequest:
    post = item.post
    reuse = near_duplicates and item.pack.reuse_near_duplicates
    return ScoreRequest(
        event_id=f"sr-{post.event_id}"[:128],
        produced_at=utcnow(),
        post_id=post.post_id,
        post_event_id=post.event_id,
        tenant=post.tenant,
        kind=post.kind,
        text=item.text,
        prompt=item.prompt,
        lang=post.lang,
        region=post.region,
        content_key=item.content_key,
        policy=item.pack.ref,
        received_at=utcnow(),
        prompt_prefix=prompt_prefix(item.pack) or None,
        near_scope=item.near_scope if reuse else None,
    )
