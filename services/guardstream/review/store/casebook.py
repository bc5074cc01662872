"""The casebook table (`0010_casebook.sql`): entries per tenant and pack, and the contested
decided tasks a refresh builds them from. Every read names its tenant."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from guardstream.contracts.casebook import CaseDraft
from guardstream.review.casebook import CaseEntry, EntryState
from guardstream.review.logic import PREVIEW_CHARS
from guardstream.review.store.db import Rows

_COLUMNS = (
    "id, tenant, pack, lang, anchor, title, reasoning, human_verdict, verdicts, categories,"
    " reasons, excerpt, size, task_ids, post_ids, state, pinned, edited, retired_by,"
    " created_at, updated_at, updated_by"
)

# What a refresh writes of a draft, in this order (`_content`): insert and renew alike.
_CONTENT = (
    "lang, title, reasoning, human_verdict, verdicts, categories, reasons, excerpt, size,"
    " task_ids, post_ids"
)


def _content(draft: CaseDraft) -> tuple[object, ...]:
    return (
        draft.lang,
        draft.title,
        draft.reasoning,
        draft.human_verdict,
        orjson.dumps(draft.verdicts).decode(),
        list(draft.categories),
        list(draft.reasons),
        draft.excerpt,
        draft.size,
        list(draft.task_ids),
        list(draft.post_ids),
    )


def _entry(row: asyncpg.Record) -> CaseEntry:
    values = dict(row)
    return CaseEntry(
        **{
            **values,
            "verdicts": orjson.loads(values["verdicts"]),
            "categories": tuple(values["categories"]),
            "reasons": tuple(values["reasons"]),
            "task_ids": tuple(values["task_ids"]),
            "post_ids": tuple(values["post_ids"]),
            "state": EntryState(values["state"]),
        }
    )


@dataclass(frozen=True, slots=True)
class CaseSource:
    """A contested decided task of a tenant, with its vector and what a case shows of it."""

    task_id: str
    post_id: str
    tenant: str
    policy: str
    lang: str | None
    decided_at: datetime
    human_verdict: str
    model_verdict: str
    corrected: bool
    categories: list[str]
    reason: str | None
    head: str | None
    model: str
    vector: bytes


class CasebookRows(Rows):
    __slots__ = ()

    async def sources(
        self, tenant: str, pack: str | None, since: datetime, limit: int
    ) -> list[CaseSource]:
        """The tenant's newest `limit` contested decided tasks since `since` (of `pack`, any
        version, or every pack) that have a vector."""
        rows = await self.db.fetch(
            "SELECT t.task_id, t.post_id, t.tenant, t.policy, t.lang, t.decided_at,"
            " t.human_verdict, t.model_verdict, r.outcome = 'correct' AS corrected,"
            " r.categories, r.reason, left(p.text, $5) AS head, v.model, v.vector"
            " FROM tasks t JOIN reviews r ON r.task_id = t.task_id AND r.stage = 'first'"
            " JOIN task_vectors v ON v.task_id = t.task_id AND v.tenant = t.tenant"
            " LEFT JOIN post_texts p ON p.tenant = t.tenant AND p.post_id = t.post_id"
            " WHERE t.tenant = $1 AND t.state = 'decided' AND t.decided_at >= $2"
            " AND ($3::text IS NULL OR split_part(t.policy, '@', 1) = $3)"
            " AND (r.outcome = 'correct' OR t.model_verdict = 'controversial')"
            " ORDER BY t.decided_at DESC LIMIT $4",
            tenant,
            since,
            pack,
            limit,
            PREVIEW_CHARS * 4,
        )
        return [CaseSource(**dict(r)) for r in rows]

    async def entries(
        self, tenants: Sequence[str] | None, pack: str | None, *, active_only: bool
    ) -> list[CaseEntry]:
        """Entries of `tenants` (None: every tenant), of `pack` or all, pinned first."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM casebook"  # noqa: S608 - constant columns
            " WHERE ($1::text[] IS NULL OR tenant = ANY($1::text[]))"
            " AND ($2::text IS NULL OR pack = $2) AND (NOT $3 OR state = 'active')"
            " ORDER BY tenant, pack, state, pinned DESC, size DESC, id",
            list(tenants) if tenants is not None else None,
            pack,
            active_only,
        )
        return [_entry(r) for r in rows]

    async def get(self, entry_id: str, *, lock: bool = False) -> CaseEntry | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM casebook WHERE id = $1"  # noqa: S608 - constant columns
            + (" FOR UPDATE" if lock else ""),
            entry_id,
        )
        return _entry(row) if row else None

    async def insert(self, draft: CaseDraft) -> str:
        entry_id = uuid.uuid4().hex
        await self.db.execute(
            "INSERT INTO casebook (id, tenant, pack, anchor, " + _CONTENT + ")"  # noqa: S608
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, $15)",
            entry_id,
            draft.tenant,
            draft.pack,
            draft.anchor,
            *_content(draft),
        )
        return entry_id

    async def renew(self, entry_id: str, draft: CaseDraft) -> None:
        """A refresh's new content for an entry nobody touched (checked again here)."""
        await self.db.execute(
            "UPDATE casebook SET (" + _CONTENT + ", updated_at, updated_by)"  # noqa: S608
            " = ($2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, now(), NULL)"
            " WHERE id = $1 AND state = 'active' AND NOT pinned AND NOT edited",
            entry_id,
            *_content(draft),
        )

    async def retire(self, entry_id: str, by: str | None) -> None:
        """`by`: the senior who retired it, or None for a refresh (which never retires a
        pinned or edited entry)."""
        await self.db.execute(
            "UPDATE casebook SET state = 'retired', retired_by = $2, updated_at = now(),"
            " updated_by = $2 WHERE id = $1 AND ($2::text IS NOT NULL OR NOT (pinned OR edited))",
            entry_id,
            by,
        )

    async def pin(self, entry_id: str, pinned: bool, by: str) -> None:
        await self.db.execute(
            "UPDATE casebook SET pinned = $2, updated_at = now(), updated_by = $3 WHERE id = $1",
            entry_id,
            pinned,
            by,
        )

    async def edit(self, entry_id: str, title: str, reasoning: str, by: str) -> None:
        await self.db.execute(
            "UPDATE casebook SET title = $2, reasoning = $3, edited = true, updated_at = now(),"
            " updated_by = $4 WHERE id = $1",
            entry_id,
            title,
            reasoning,
            by,
        )

    async def lock_pack(self, tenant: str, pack: str) -> None:
        """Refreshes of one tenant's pack run one at a time (until the transaction ends)."""
        await self.db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('casebook:' || $1 || '@' || $2, 0))",
            tenant,
            pack,
        )
