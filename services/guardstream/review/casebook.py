"""The casebook (争议案例手册, issue 22) on the review side: entries, what a refresh may change,
and which entries a task's guidelines show. Pure.

A refresh (`plan_refresh`) keeps every entry a person touched: pinned and edited entries stay
as they are and keep their place in the pack's ten, and an entry a senior retired stays
retired - a draft whose anchor is one of its source items is not proposed again. Entries only
a refresh wrote are updated in place when their anchor comes back, and retired when it does
not.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.contracts.casebook import CaseDraft

GUIDELINE_CASES = 5  # entries shown beside a task's decision controls


class EntryState(enum.StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class CaseEntry:
    id: str
    tenant: str
    pack: str
    lang: str
    anchor: str
    title: str
    reasoning: str
    human_verdict: str
    verdicts: dict[str, int]
    categories: tuple[str, ...]
    reasons: tuple[str, ...]
    excerpt: str | None
    size: int
    task_ids: tuple[str, ...]
    post_ids: tuple[str, ...]
    state: EntryState
    pinned: bool
    edited: bool
    retired_by: str | None
    created_at: datetime
    updated_at: datetime
    updated_by: str | None

    @property
    def touched(self) -> bool:
        """A person made it what it is: a refresh leaves it alone."""
        return (
            self.pinned
            or self.edited
            or (self.state is EntryState.RETIRED and self.retired_by is not None)
        )


@dataclass(frozen=True, slots=True)
class RefreshPlan:
    insert: list[CaseDraft]
    update: list[tuple[str, CaseDraft]]  # (entry id, its new content)
    retire: list[str]  # entry ids a refresh wrote that no draft renews


def plan_refresh(
    existing: Sequence[CaseEntry], drafts: Sequence[CaseDraft], per_pack: int
) -> RefreshPlan:
    """What a refresh of one tenant's pack does with its `existing` entries (all states)."""
    kept = [e for e in existing if e.state is EntryState.ACTIVE and (e.pinned or e.edited)]
    refused = {t for e in existing if e.touched for t in e.task_ids}
    auto = {e.anchor: e for e in existing if e.state is EntryState.ACTIVE and not e.touched}
    room = max(0, per_pack - len(kept))
    chosen = [d for d in drafts if d.anchor not in refused][:room]
    update = [(auto[d.anchor].id, d) for d in chosen if d.anchor in auto]
    insert = [d for d in chosen if d.anchor not in auto]
    renewed = {entry_id for entry_id, _ in update}
    retire = [e.id for e in auto.values() if e.id not in renewed]
    return RefreshPlan(insert=insert, update=update, retire=retire)


def guidelines_for(
    entries: Sequence[CaseEntry], categories: Sequence[str], task_id: str, *, blind: bool
) -> list[CaseEntry]:
    """The active entries a task's page shows: those of the task's categories first (then the
    pack's others, pinned first), at most `GUIDELINE_CASES`. A blind QA view never gets an
    entry built from the task itself: its decided label would be the answer."""
    wanted = set(categories)
    shown = [
        e for e in entries if e.state is EntryState.ACTIVE and not (blind and task_id in e.task_ids)
    ]
    shown.sort(key=lambda e: (not (wanted & set(e.categories)), not e.pinned, -e.size))
    return shown[:GUIDELINE_CASES]
