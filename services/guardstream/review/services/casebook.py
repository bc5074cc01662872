"""The casebook service: reading a tenant's entries, a senior's pin / edit / retire, a refresh
from the feedback job's drafts, and the guidelines beside a task. Every change commits with its
audit row; an entry of a tenant the reviewer may not see is "not found" (audited as denied).

| action  | who                         | audit action       |
|---------|-----------------------------|--------------------|
| list    | read_queue (text: read_text) | `casebook.read`    |
| pin     | qa (seniors)                | `casebook.pin`     |
| edit    | qa                          | `casebook.edit`    |
| retire  | qa                          | `casebook.retire`  |
| refresh | the feedback job (no reviewer) | `casebook.refresh` |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from guardstream.contracts.casebook import REASONING_MAX, TITLE_MAX, CaseDraft
from guardstream.review import metrics as review_metrics
from guardstream.review.casebook import (
    CaseEntry,
    EntryState,
    guidelines_for,
    plan_refresh,
)
from guardstream.review.logic import InvalidSubmission, Permission, Reviewer
from guardstream.review.services.common import Service
from guardstream.review.services.errors import Conflict, NotFound
from guardstream.review.store import Tx

REFRESH_ACTOR = "feedback-casebook"


@dataclass(frozen=True, slots=True)
class Refreshed:
    tenant: str
    pack: str
    inserted: int
    updated: int
    retired: int
    kept: int  # pinned or edited entries left as they were


def checked_edit(title: str, reasoning: str) -> tuple[str, str]:
    """A senior's title and reasoning, stripped; `InvalidSubmission` (422, naming the field)
    when empty or too long."""
    title, reasoning = title.strip(), reasoning.strip()
    for field, value, limit in (
        ("title", title, TITLE_MAX),
        ("reasoning", reasoning, REASONING_MAX),
    ):
        if not value:
            raise InvalidSubmission(field, "is empty")
        if len(value) > limit:
            raise InvalidSubmission(field, f"is longer than {limit} characters")
    return title, reasoning


class CasebookService(Service):
    async def entries(
        self, reviewer: Reviewer, pack: str | None, *, retired: bool = False
    ) -> list[CaseEntry]:
        """The reviewer's tenants' entries (of `pack`, or all); without read_text, no excerpts."""
        self._require(reviewer, Permission.READ_QUEUE)
        tenants = None if "*" in reviewer.tenants else reviewer.tenants
        async with self.store.transaction() as tx:
            found = await tx.casebook.entries(tenants, pack, active_only=not retired)
            await tx.audit.write(
                actor=reviewer.id,
                action="casebook.read",
                detail={"pack": pack[:128] if pack else None, "entries": len(found)},
            )
        return [self._shown(reviewer, e) for e in found]

    async def entry(self, reviewer: Reviewer, entry_id: str) -> CaseEntry:
        self._require(reviewer, Permission.READ_QUEUE)
        async with self.store.transaction() as tx:
            found = await self._visible_entry(tx, reviewer, entry_id, "casebook.read")
            await tx.audit.write(
                actor=reviewer.id,
                action="casebook.read",
                tenant=found.tenant,
                detail={"entry": found.id},
            )
        return self._shown(reviewer, found)

    async def pin(self, reviewer: Reviewer, entry_id: str, pinned: bool) -> CaseEntry:
        self._require(reviewer, Permission.QA)
        async with self.store.transaction() as tx:
            found = await self._visible_entry(tx, reviewer, entry_id, "casebook.pin", lock=True)
            if found.state is EntryState.RETIRED:
                raise Conflict("the entry is retired")
            await tx.casebook.pin(found.id, pinned, reviewer.id)
            await tx.audit.write(
                actor=reviewer.id,
                action="casebook.pin",
                tenant=found.tenant,
                detail={"entry": found.id, "pinned": pinned},
            )
            return await self._reread(tx, found.id)

    async def edit(
        self, reviewer: Reviewer, entry_id: str, title: str, reasoning: str
    ) -> CaseEntry:
        self._require(reviewer, Permission.QA)
        title, reasoning = checked_edit(title, reasoning)
        async with self.store.transaction() as tx:
            found = await self._visible_entry(tx, reviewer, entry_id, "casebook.edit", lock=True)
            if found.state is EntryState.RETIRED:
                raise Conflict("the entry is retired")
            await tx.casebook.edit(found.id, title, reasoning, reviewer.id)
            await tx.audit.write(
                actor=reviewer.id,
                action="casebook.edit",
                tenant=found.tenant,
                # Lengths, not the text: reasons about posts go with erasure, audit rows stay.
                detail={
                    "entry": found.id,
                    "title_chars": len(title),
                    "reasoning_chars": len(reasoning),
                },
            )
            return await self._reread(tx, found.id)

    async def retire(self, reviewer: Reviewer, entry_id: str) -> CaseEntry:
        self._require(reviewer, Permission.QA)
        async with self.store.transaction() as tx:
            found = await self._visible_entry(tx, reviewer, entry_id, "casebook.retire", lock=True)
            if found.state is EntryState.RETIRED:
                raise Conflict("the entry is retired already")
            await tx.casebook.retire(found.id, reviewer.id)
            await tx.audit.write(
                actor=reviewer.id,
                action="casebook.retire",
                tenant=found.tenant,
                detail={"entry": found.id},
            )
            return await self._reread(tx, found.id)

    async def refresh(
        self, tenant: str, pack: str, drafts: Sequence[CaseDraft], per_pack: int
    ) -> Refreshed:
        """Replace what a refresh wrote before with `drafts` (of this tenant and pack, best
        first); pinned, edited and senior-retired entries stay as they are."""
        drafts = [d for d in drafts if d.tenant == tenant and d.pack == pack]
        async with self.store.transaction() as tx:
            await tx.casebook.lock_pack(tenant, pack)
            existing = await tx.casebook.entries([tenant], pack, active_only=False)
            plan = plan_refresh(existing, drafts, per_pack)
            for draft in plan.insert:
                await tx.casebook.insert(draft)
            for entry_id, draft in plan.update:
                await tx.casebook.renew(entry_id, draft)
            for entry_id in plan.retire:
                await tx.casebook.retire(entry_id, None)
            kept = sum(e.state is EntryState.ACTIVE and (e.pinned or e.edited) for e in existing)
            result = Refreshed(
                tenant, pack, len(plan.insert), len(plan.update), len(plan.retire), kept
            )
            await tx.audit.write(
                actor=REFRESH_ACTOR,
                action="casebook.refresh",
                tenant=tenant,
                detail={
                    "pack": pack,
                    "inserted": result.inserted,
                    "updated": result.updated,
                    "retired": result.retired,
                    "kept": kept,
                },
            )
        return result

    async def guidelines(
        self,
        reviewer: Reviewer,
        tenant: str,
        pack: str,
        categories: Sequence[str],
        task_id: str,
        *,
        blind: bool,
    ) -> list[CaseEntry]:
        """The casebook entries beside a task the reviewer may already see (its page checked
        the tenant): its categories' first; none built from the task itself when `blind`."""
        found = await self.store.casebook.entries([tenant], pack, active_only=True)
        return [
            self._shown(reviewer, e)
            for e in guidelines_for(found, categories, task_id, blind=blind)
        ]

    async def _visible_entry(
        self, tx: Tx, reviewer: Reviewer, entry_id: str, action: str, *, lock: bool = False
    ) -> CaseEntry:
        found = await tx.casebook.get(entry_id, lock=lock)
        if found is None or not reviewer.sees(found.tenant):
            await self.store.audit.write(
                actor=reviewer.id,
                action=action,
                outcome="denied",
                tenant=found.tenant if found else None,
                detail={
                    "entry": entry_id[:128],
                    "why": "other tenant" if found else "no such entry",
                },
            )
            review_metrics.denied.add(1, {"reason": "other_tenant" if found else "not_found"})
            raise NotFound("no such casebook entry")
        return found

    @staticmethod
    async def _reread(tx: Tx, entry_id: str) -> CaseEntry:
        found = await tx.casebook.get(entry_id)
        if found is None:  # pragma: no cover - locked in this transaction
            raise NotFound("no such casebook entry")
        return found

    @staticmethod
    def _shown(reviewer: Reviewer, entry: CaseEntry) -> CaseEntry:
        if reviewer.may(Permission.READ_TEXT) or entry.excerpt is None:
            return entry
        return replace(entry, excerpt=None)
