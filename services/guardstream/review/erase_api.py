"""The admin route of erasure on request (`POST /api/v1/admin/erasures`): the same run as
`guardstream erase` (`review.erasure`), for an admin of the tenant. The receipt comes back
(counts and hashed ids, no text); an invalid request is a 422 naming the field, never its
value; `dry_run` changes nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from guardstream.review.api import Caller, errors, services_of
from guardstream.review.erasure import STORE_ERRORS, erase_on_request
from guardstream.review.logic import Permission
from guardstream.review.services.errors import Forbidden
from guardstream.runtime.settings import Settings
from guardstream.verdict.erasure import MAX_POSTS, ErasureReceipt, InvalidSelector, selector

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], responses=errors(401, 413, 429, 503))


class ErasureIn(BaseModel):
    tenant: Annotated[str, Field(max_length=64, description="The tenant whose data is erased.")]
    post_ids: Annotated[
        list[Annotated[str, Field(max_length=128)]],
        Field(max_length=MAX_POSTS, description="Post ids to erase (or give author_id)."),
    ] = []
    author_id: Annotated[
        str | None, Field(max_length=128, description="An author: every post of theirs.")
    ] = None
    dry_run: bool = Field(False, description="Change nothing; say what would be removed.")


@router.post(
    "/erasures",
    response_model=ErasureReceipt,
    responses=errors(400, 403, 422),
    summary="Erase a tenant's posts or author from every store (admin)",
)
async def erase(request: Request, body: ErasureIn, caller: Caller) -> Response:
    services = services_of(request)
    settings: Settings = request.app.state.settings
    if not caller.may(Permission.MANAGE) or not caller.sees(body.tenant):
        await services.store.audit.write(
            actor=caller.id, action="erase", outcome="denied", detail={"why": "not an admin"}
        )
        raise Forbidden("only an admin of the tenant may erase its data")
    try:
        sel = selector(body.tenant, posts=body.post_ids, author=body.author_id)
    except InvalidSelector as exc:
        return JSONResponse({"detail": exc.reason, "field": exc.field}, status_code=422)
    try:
        receipt = await erase_on_request(
            settings, services.store, sel, dry_run=body.dry_run, requested_by=caller.id
        )
    except STORE_ERRORS as exc:
        # A store did not answer: nothing is half-promised; erasure is idempotent, retry it.
        return JSONResponse(
            {"detail": f"a store could not be reached ({type(exc).__name__}): retry"},
            status_code=503,
            headers={"Retry-After": "30"},
        )
    return Response(receipt.model_dump_json(), media_type="application/json")
