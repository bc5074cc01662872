"""The moderation API's routes (FastAPI): guardstream's own `/v1/moderate` and its batch, and
OpenAI's `/v1/moderations`.

Every body is read here, up to `GUARDSTREAM_API_MAX_BODY_BYTES` (413 past it, read no
further), and judged by the post contract through `api.moderator`: a refused post is a 422
with the contract's reason (and a DLQ record), never a 5xx. Status codes:

| outcome                                  | `/v1/moderate` | batch item | `/v1/moderations`   |
|------------------------------------------|----------------|------------|---------------------|
| decided                                  | 200 Decision   | 200        | 200, its result     |
| escalated to the larger model's tier     | 202            | 202        | 200, flagged (held) |
| refused by the contract                  | 422 reason     | 422        | 400 OpenAI error    |
| scorer busy (1)                          | 503 Retry-After| 503        | 503 Retry-After     |
| body over the limit                      | 413            | 413        | 413                 |
| no key, an invalid or revoked key (2)    | 401 reason     | 401        | 401 OpenAI error    |
| a tenant other than the key's (2)        | 403 reason     | 403        | 403 OpenAI error    |
| over the key's rate limit (2)            | 429 Retry-After| 429        | 429 Retry-After     |

(1) saturated, or unreachable under a `fail_open` pack (`fail_closed`: decided, to review).
(2) `api.gate`, before the body is read; a batch is refused whole. `GET /v1/decisions/{id}`
answers 401/403/429 the same way and reads the key's tenant only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from guardstream.api import openai_compat, page, responses
from guardstream.api.gate import TENANT_HEADER, Gate, caller
from guardstream.api.moderator import (
    Escalated,
    Moderator,
    Outcome,
    Refused,
    Unavailable,
    decision_body,
)
from guardstream.api.protocol import (
    BatchItem,
    ModerateRequest,
    Refusal,
    parse_json,
)
from guardstream.api.telemetry import RequestTelemetry
from guardstream.contracts.errors import PermanentError, TransientError
from guardstream.contracts.events import (
    ContractError,
    Decision,
    Id,
    Tenant,
    describe_errors,
    rejection_reason,
)
from guardstream.policy import PolicyRegistry
from guardstream.runtime import redisstore
from guardstream.verdict.latest import LatestDecisions

log = logging.getLogger(__name__)

# What Redis (or its client, encoding a value) refuses because of a post's values.
REJECTED_DATA: tuple[type[BaseException], ...] = (redis.exceptions.DataError, UnicodeError)


_ID: TypeAdapter[str] = TypeAdapter(Id)
_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)


TITLE = "guardstream moderation API"  # also how `guardstream doctor` knows the API


class BodyTooLarge(PermanentError):
    """A request body over `GUARDSTREAM_API_MAX_BODY_BYTES` (413, read no further)."""


def _json(status: int, value: object, **headers: str) -> Response:
    return Response(orjson.dumps(value), status, headers, media_type="application/json")


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": responses.inline_defs(model.model_json_schema())}
            },
        }
    }


def create_app(
    moderator: Moderator,
    latest: LatestDecisions,
    *,
    max_body_bytes: int,
    batch_max: int,
    retry_after_s: int,
    gate: Gate,
    policies: PolicyRegistry,
) -> FastAPI:
    app = FastAPI(
        title=TITLE,
        description="Synchronous moderation: the same decisions as the Kafka door.",
        version="1",
    )
    busy = {"Retry-After": str(retry_after_s)}
    gate.install(app)
    # Added last, so outermost: the gate's 401/403/429 are measured and traced too.
    app.add_middleware(RequestTelemetry)  # latency per route and outcome; the request's span
    app.include_router(page.router(policies))  # the seed's web page at `/`, `GET /v1/packs`

    async def body_of(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def decide(items: Sequence[object], route: str) -> list[Outcome] | Response:
        """`moderator.moderate`, with what the stores refuse found item by item (as triage
        isolates it) and a broker failure answered 503."""
        try:
            try:
                return await moderator.moderate(items, route)
            except REJECTED_DATA:
                outcomes: list[Outcome] = []
                for item in items:
                    try:
                        outcomes.extend(await moderator.moderate([item], route))
                    except REJECTED_DATA as exc:
                        outcomes.append(Refused("store_rejected", type(exc).__name__))
                return outcomes
        except TransientError as exc:
            log.warning("moderation failed", extra={"route": route, "error": type(exc).__name__})
            return _json(503, {"error": "temporarily unavailable"}, **busy)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, _exc: BodyTooLarge) -> Response:
        # Refused unread: its DLQ record says so, without the payload.
        refusal = ContractError("body_too_large", f"body over {max_body_bytes} bytes")
        await moderator.refuse(b"", refusal, request.url.path)
        return _json(413, {"reason": refusal.reason, "detail": refusal.detail})

    def single(outcome: Outcome) -> Response:
        if isinstance(outcome, Decision):
            return Response(decision_body(outcome), 200, media_type="application/json")
        if isinstance(outcome, Refused):
            return _json(422, {"reason": outcome.reason, "detail": outcome.detail})
        if isinstance(outcome, Escalated):
            return _json(202, {"escalated": True, "post_id": outcome.post_id})
        return _json(503, {"error": outcome.why}, **busy)

    @app.post(
        "/v1/moderate",
        openapi_extra=_body_schema(ModerateRequest),
        responses=responses.MODERATE,
    )
    async def moderate(request: Request) -> Response:
        """One post → the decision the stream would make for it."""
        item = caller(request).bind_raw(await body_of(request))
        outcomes = await decide([item], "/v1/moderate")
        return outcomes if isinstance(outcomes, Response) else single(outcomes[0])

    @app.post(
        "/v1/moderate/batch",
        openapi_extra=responses.batch_body(batch_max),
        responses=responses.BATCH,
    )
    async def moderate_batch(request: Request) -> Response:
        """Up to `GUARDSTREAM_API_BATCH_MAX` posts → one outcome each, in order."""
        raw = await body_of(request)
        try:
            posts = _batch(parse_json(raw), batch_max)
        except ContractError as exc:
            await moderator.refuse(raw, exc, "/v1/moderate/batch")
            return _json(422, {"reason": exc.reason, "detail": exc.detail})
        posts = [caller(request).bind(post) for post in posts]
        outcomes = await decide(posts, "/v1/moderate/batch")
        if isinstance(outcomes, Response):
            return outcomes
        return _json(200, {"results": [_item(o).model_dump(exclude_none=True) for o in outcomes]})

    @app.post(
        "/v1/moderations",
        openapi_extra=_body_schema(openai_compat.ModerationsRequest),
        response_model=openai_compat.ModerationsResponse,
        responses=responses.MODERATIONS,
    )
    async def moderations(request: Request) -> Response:
        """OpenAI-compatible moderation (docs: the mapping of categories)."""
        raw = await body_of(request)
        tenant = caller(request).tenant_for(request.headers.get(TENANT_HEADER))
        try:
            texts, model = openai_compat.inputs(parse_json(raw), batch_max)
        except ContractError as exc:
            await moderator.refuse(raw, exc, "/v1/moderations")
            return _openai_error(exc.reason, exc.detail)
        outcomes = await decide([{"text": t, "tenant": tenant} for t in texts], "/v1/moderations")
        if isinstance(outcomes, Response):
            return outcomes
        decisions: list[Decision | None] = []
        for outcome in outcomes:
            if isinstance(outcome, Refused):
                return _openai_error(outcome.reason, outcome.detail)
            if isinstance(outcome, Unavailable):
                return _json(
                    503, {"error": {"message": outcome.why, "type": "server_error"}}, **busy
                )
            decisions.append(outcome if isinstance(outcome, Decision) else None)
        answer = openai_compat.response(decisions, model)
        return Response(answer.model_dump_json(), 200, media_type="application/json")

    @app.get("/v1/decisions/{post_id}", responses=responses.DECISIONS)
    async def current_decision(
        request: Request, post_id: str, tenant: str | None = None
    ) -> Response:
        """The post's current decision: the last one published for it (by either door, a
        human's review or the SLA timer), as the action topics carried it. For the key's
        tenant (`tenant` may only repeat it)."""
        tenant = caller(request).tenant_for(tenant)
        try:
            _ID.validate_python(post_id)
            _TENANT.validate_python(tenant)
        except ValidationError as exc:
            return _json(422, {"reason": rejection_reason(exc), "detail": describe_errors(exc)})
        try:
            found = await latest.get(tenant, post_id)
        except redisstore.Unavailable:
            return _json(503, {"error": "the decision index is unavailable"}, **busy)
        if found is None:
            return _json(404, {"reason": "unknown_post", "detail": "no decision for this post"})
        return Response(found.to_json(), 200, media_type="application/json")

    return app


def _batch(body: object, batch_max: int) -> list[object]:
    """The posts of a batch request, or `ContractError`."""
    posts = body.get("posts") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(posts, list) or set(body) != {"posts"}:
        raise ContractError("invalid_schema", "a batch is an object with `posts` only")
    if not 0 < len(posts) <= batch_max:
        raise ContractError("invalid_schema", f"a batch holds 1 to {batch_max} posts")
    return posts


def _item(outcome: Outcome) -> BatchItem:
    if isinstance(outcome, Decision):
        return BatchItem(status=200, decision=orjson.loads(decision_body(outcome)))
    if isinstance(outcome, Refused):
        return BatchItem(status=422, error=Refusal(reason=outcome.reason, detail=outcome.detail))
    if isinstance(outcome, Escalated):
        return BatchItem(status=202)
    return BatchItem(status=503)


def _openai_error(reason: str, detail: str) -> Response:
    return _json(
        400,
        {
            "error": {
                "message": detail,
                "type": "invalid_request_error",
                "param": "input",
                "code": reason,
            }
        },
    )
