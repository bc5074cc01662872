"""What the moderation API answers, for its OpenAPI document: every status a route can give
and the body it gives with it (checked by a bounded schemathesis run,
`tests/integration/api/test_api_openapi.py`). The bodies are written by `api.app`; these
models only describe them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from guardstream.api.openai_compat import ModerationsResponse
from guardstream.api.protocol import BatchItem, Refusal
from guardstream.contracts.events import Decision


class ReviewReference(BaseModel):
    """Where a contested post went: its review task and where its final decision appears."""

    task_id: str = Field(description="The review task the post opened (the review queue's id).")
    poll: str = Field(
        description="Path to poll for the post's current decision (`GET /v1/decisions/...`): "
        "the human's once they decide, or the SLA's."
    )


class ModerateResponse(Decision):
    """The decision the stream would make (as on the action topics), and for a contested post
    (action `review`) a review reference."""

    review: ReviewReference | None = Field(
        None, description="Only for action `review`: the review task and where to poll."
    )


class EscalatedResponse(BaseModel):
    """Sent to the larger model's tier: decided on the action topics (poll the decision)."""

    escalated: bool
    post_id: str


class BatchResponse(BaseModel):
    results: list[BatchItem]


class Busy(BaseModel):
    """The scorer is saturated, unreachable under a fail-open pack, or the broker failed:
    retry after `Retry-After` seconds."""

    error: str | dict[str, Any]


class NotFound(BaseModel):
    """No decision for this post (or no such route)."""

    reason: str | None = None
    detail: str


class OpenAIError(BaseModel):
    """OpenAI's error body (`error.code`: the contract's reason)."""

    error: dict[str, Any]


def inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` written in place: an OpenAPI document resolves
    `#/$defs/...` against its own root, where they are not."""
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


def batch_body(batch_max: int) -> dict[str, Any]:
    """The batch route's request body: an object with `posts` only, 1 to `batch_max` of them.
    Each post is judged on its own, as `/v1/moderate`'s body (`ModerateRequest`): one that is
    not a valid post is that item's 422 in a 200 answer, so the items are documented as any
    JSON value rather than refused whole."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "posts": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": batch_max,
                                "items": {
                                    "description": "A post as /v1/moderate's body (judged "
                                    "one by one: an invalid one is its item's 422).",
                                    "examples": [{"text": "Hello"}],
                                },
                            }
                        },
                        "required": ["posts"],
                        "additionalProperties": False,
                    }
                }
            },
        }
    }


_RETRY = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}


def _doc(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "description": description, **extra}


REFUSED = _doc(Refusal, "Refused by the post contract: its reason (also dead-lettered)")
TOO_LARGE = _doc(Refusal, "Body over GUARDSTREAM_API_MAX_BODY_BYTES (reason body_too_large)")
BUSY = _doc(Busy, "Busy: retry after Retry-After seconds", headers=_RETRY)

MODERATE: dict[int | str, dict[str, Any]] = {
    200: _doc(ModerateResponse, "Decided"),
    202: _doc(EscalatedResponse, "Escalated to the larger model's tier"),
    413: TOO_LARGE,
    422: REFUSED,
    503: BUSY,
}
BATCH: dict[int | str, dict[str, Any]] = {
    200: _doc(BatchResponse, "One outcome per post, in order (`decision` as /v1/moderate's)"),
    413: TOO_LARGE,
    422: _doc(Refusal, "Not a batch (not an object with 1 to GUARDSTREAM_API_BATCH_MAX posts)"),
    503: BUSY,
}
MODERATIONS: dict[int | str, dict[str, Any]] = {
    200: _doc(ModerationsResponse, "OpenAI's moderation result, one per input"),
    400: _doc(OpenAIError, "Refused (OpenAI's invalid_request_error; also dead-lettered)"),
    413: TOO_LARGE,
    503: BUSY,
}
DECISIONS: dict[int | str, dict[str, Any]] = {
    200: _doc(Decision, "The post's current decision"),
    404: _doc(NotFound, "No decision for this post (yet)"),
    422: _doc(Refusal, "Not a valid post id or tenant"),
    503: BUSY,
}
