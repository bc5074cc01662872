"""Triage decisions as pure functions: a raw record becomes a rejection or a keyed post."""

from __future__ import annotations

from dataclasses import dataclass

from guardstream.core.content import content_key, normalise
from guardstream.core.contracts import ContractError, Kind, Post, ScoreRequest, utcnow


@dataclass(frozen=True, slots=True)
class Triaged:
    post: Post
    text: str  # normalised
    prompt: str | None  # normalised
    content_key: str


def triage_record(
    raw: bytes | None, *, max_text_chars: int, model: str, adapter: str | None
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
    key = content_key(text, kind=post.kind.value, prompt=prompt, model=model, adapter=adapter)
    return Triaged(post, text, prompt, key)


def score_request(item: Triaged, policy: str) -> ScoreRequest:
    post = item.post
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
        policy=policy,
        received_at=utcnow(),
    )
