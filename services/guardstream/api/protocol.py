"""What the moderation API reads and writes, and how a request body becomes a post.

The request models document the API (OpenAPI); they are not where input is judged. A body is
parsed here and turned into the post event the stream would carry, and the post contract
(`contracts.events.Post`, via `verdict.intake`) judges it, so the API refuses exactly what the
Kafka door dead-letters, with the same reasons (`invalid_json`, `invalid_schema`,
`forbidden_character`, `text_too_long`, `empty_text`, ...). Only the API's own framing is
checked here: a JSON object, known fields, a batch within its limit.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from guardstream.contracts.events import SCHEMA_VERSION, ContractError, Kind

DEFAULT_TENANT = "default"
ANONYMOUS_AUTHOR = "api-anonymous"


class ModerateRequest(BaseModel):
    """One post to moderate: prompt moderation (`text` alone) or response moderation (`text`
    answering `prompt`)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The content to judge.")
    prompt: str | None = Field(
        None, description="For response moderation: the prompt that `text` answers."
    )
    tenant: str = Field(DEFAULT_TENANT, description="Whose policy pack applies.")
    lang: str | None = Field(None, description="BCP 47 language tag, when known.")
    region: str | None = Field(None, description="Region, when a pack is chosen by it.")
    post_id: str | None = Field(None, description="Your id for the post; one is made if absent.")
    author_id: str | None = Field(None, description="Your id for the author, when known.")
    event_id: str | None = Field(
        None,
        description="Idempotency key: the same event id (within a tenant) gets the same "
        "decision again; one is made if absent.",
    )


class ModerateBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    posts: list[ModerateRequest]


class Refusal(BaseModel):
    """Why a post was refused (it went to the DLQ with the same reason)."""

    reason: str
    detail: str


class BatchItem(BaseModel):
    """One post's outcome in a batch: its decision (a JSON object as `/v1/moderate` returns
    it), or why it was refused, or that it could not be decided now."""

    status: int
    decision: dict[str, Any] | None = None
    error: Refusal | None = None


_FIELDS = frozenset(ModerateRequest.model_fields)
_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


def parse_json(raw: bytes) -> object:
    """`raw` as JSON, or `ContractError` with the contract's reason (as `Post.from_json`)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "high surrogate" in exc.msg or "low surrogate" in exc.msg:  # a `\udXXX` escape
            raise ContractError("forbidden_character", f"lone surrogate ({exc.msg})") from None
        raise ContractError("invalid_json", f"not valid UTF-8 JSON ({exc.msg})") from None


def post_event(item: object, now: datetime) -> bytes:
    """The post event (`posts.v1` JSON) a request item stands for; the values are passed on
    as given, for the post contract to judge. Raises `ContractError` for what is not a request
    at all (not an object, unknown fields)."""
    if not isinstance(item, dict):
        raise ContractError("invalid_schema", "a post is a JSON object")
    unknown = [k for k in item if k not in _FIELDS]
    if unknown:
        # Names only when they look like names: a client's text never reaches a DLQ reason.
        named = sorted(k for k in unknown if _NAME.fullmatch(k))[:5]
        raise ContractError(
            "invalid_schema",
            f"{len(unknown)} unknown field(s)" + (f": {', '.join(named)}" if named else ""),
        )
    prompt = item.get("prompt")
    made = uuid.uuid4().hex

    def given(name: str, default: str) -> object:
        # Absent or null only: any other value (`""`, `[]`, `0`) is the contract's to judge.
        value = item.get(name)
        return default if value is None else value

    event = {
        "schema_version": SCHEMA_VERSION,
        "event_id": given("event_id", f"api-{made}"),
        "produced_at": now,
        "post_id": given("post_id", f"api-{made}"),
        "tenant": item.get("tenant", DEFAULT_TENANT),  # not nullable: null is refused
        "author_id": given("author_id", ANONYMOUS_AUTHOR),
        "text": item.get("text"),
        "kind": Kind.PROMPT if prompt is None else Kind.RESPONSE,
        "created_at": now,
    }
    for name in ("prompt", "lang", "region"):
        if item.get(name) is not None:
            event[name] = item[name]
    try:
        return orjson.dumps(event, option=orjson.OPT_UTC_Z)
    except TypeError as exc:  # a value orjson cannot write back (e.g. an integer over 64 bits)
        raise ContractError("invalid_schema", f"unwritable value ({exc})") from None
