"""The casebook's JSON routes (`/api/v1/casebook`, issue 22): a reviewer reads their tenants'
entries; a senior pins, edits (title and reasoning) or retires one. Another tenant's entry is a
404, like a missing one; an invalid edit is a 422 naming the field, never echoing the value."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from guardstream.contracts.casebook import REASONING_MAX, TITLE_MAX
from guardstream.review.api import Caller, Filter, TaskId, Text, errors, services_of
from guardstream.review.casebook import CaseEntry
from guardstream.review.services.casebook import CasebookService

router = APIRouter(
    prefix="/api/v1/casebook", tags=["casebook"], responses=errors(401, 413, 422, 429, 503)
)


def _svc(request: Request) -> CasebookService:
    return services_of(request).casebook


class CaseOut(BaseModel):
    id: str
    tenant: str
    pack: str
    lang: str
    title: str
    reasoning: str
    human_verdict: str
    verdicts: dict[str, int]
    categories: list[str]
    reasons: list[str]
    excerpt: str | None = Field(description="The case's text preview (needs read_text)")
    size: int = Field(description="Contested decisions in the case's cluster")
    task_ids: list[str] = Field(description="Source review tasks, nearest the case first")
    post_ids: list[str]
    state: str
    pinned: bool
    edited: bool
    updated_at: datetime
    updated_by: str | None

    @classmethod
    def of(cls, entry: CaseEntry) -> CaseOut:
        return cls(
            id=entry.id,
            tenant=entry.tenant,
            pack=entry.pack,
            lang=entry.lang,
            title=entry.title,
            reasoning=entry.reasoning,
            human_verdict=entry.human_verdict,
            verdicts=entry.verdicts,
            categories=list(entry.categories),
            reasons=list(entry.reasons),
            excerpt=entry.excerpt,
            size=entry.size,
            task_ids=list(entry.task_ids),
            post_ids=list(entry.post_ids),
            state=entry.state.value,
            pinned=entry.pinned,
            edited=entry.edited,
            updated_at=entry.updated_at,
            updated_by=entry.updated_by,
        )


class PinIn(BaseModel):
    pinned: bool = True


class EditIn(BaseModel):
    title: Annotated[Text, Field(min_length=1, max_length=TITLE_MAX)]
    reasoning: Annotated[Text, Field(min_length=1, max_length=REASONING_MAX)]


@router.get(
    "", response_model=list[CaseOut], responses=errors(403), summary="The casebook's entries"
)
async def entries(
    request: Request,
    caller: Caller,
    pack: Filter = None,
    retired: Annotated[bool, Query(description="Retired entries too")] = False,
) -> list[CaseOut]:
    found = await _svc(request).entries(caller, pack, retired=retired)
    return [CaseOut.of(e) for e in found]


@router.get("/{entry_id}", response_model=CaseOut, responses=errors(403, 404), summary="One entry")
async def entry(request: Request, entry_id: TaskId, caller: Caller) -> CaseOut:
    return CaseOut.of(await _svc(request).entry(caller, entry_id))


@router.post(
    "/{entry_id}/pin",
    response_model=CaseOut,
    responses=errors(400, 403, 404, 409),
    summary="Pin or unpin an entry (senior): a refresh never replaces it",
)
async def pin(request: Request, entry_id: TaskId, body: PinIn, caller: Caller) -> CaseOut:
    return CaseOut.of(await _svc(request).pin(caller, entry_id, body.pinned))


@router.post(
    "/{entry_id}/edit",
    response_model=CaseOut,
    responses=errors(400, 403, 404, 409),
    summary="Edit an entry's title and reasoning (senior): a refresh never replaces it",
)
async def edit(request: Request, entry_id: TaskId, body: EditIn, caller: Caller) -> CaseOut:
    return CaseOut.of(await _svc(request).edit(caller, entry_id, body.title, body.reasoning))


@router.post(
    "/{entry_id}/retire",
    response_model=CaseOut,
    responses=errors(403, 404, 409),
    summary="Retire an entry (senior): a refresh does not propose its cases again",
)
async def retire(request: Request, entry_id: TaskId, caller: Caller) -> CaseOut:
    return CaseOut.of(await _svc(request).retire(caller, entry_id))
