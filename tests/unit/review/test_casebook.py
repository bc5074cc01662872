"""The casebook's pure rules (issue 22): what a refresh may change (never a pinned, edited or
senior-retired entry, and never a retired case again), the guidelines beside a task (its
categories first; a blind QA view never gets the entry built from the task itself), and the
drafts the feedback job proposes from clusters (largest first, at most ten per pack)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guardstream.contracts.casebook import TITLE_MAX, CaseDraft
from guardstream.feedback.casebook import CaseItem, pack_id, pick_cases
from guardstream.review.casebook import (
    GUIDELINE_CASES,
    CaseEntry,
    EntryState,
    guidelines_for,
    plan_refresh,
)
from guardstream.review.logic import InvalidSubmission
from guardstream.review.services.casebook import checked_edit

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def draft(anchor: str, size: int = 1, categories: tuple[str, ...] = ()) -> CaseDraft:
    return CaseDraft(
        tenant="acme",
        pack="default",
        lang="zh",
        anchor=anchor,
        title=f"case {anchor}",
        reasoning="why",
        human_verdict="unsafe",
        verdicts={"unsafe": size},
        categories=categories,
        reasons=("r",),
        excerpt=None,
        size=size,
        task_ids=(anchor, *(f"{anchor}-{i}" for i in range(size - 1))),
        post_ids=(f"p-{anchor}",),
    )


def entry(anchor: str, **changes: object) -> CaseEntry:
    d = draft(anchor, int(changes.pop("size", 1)), tuple(changes.pop("categories", ())))  # type: ignore[call-overload]
    base = CaseEntry(
        id=f"e-{anchor}",
        tenant=d.tenant,
        pack=d.pack,
        lang=d.lang,
        anchor=d.anchor,
        title=d.title,
        reasoning=d.reasoning,
        human_verdict=d.human_verdict,
        verdicts=d.verdicts,
        categories=d.categories,
        reasons=d.reasons,
        excerpt=None,
        size=d.size,
        task_ids=d.task_ids,
        post_ids=d.post_ids,
        state=EntryState.ACTIVE,
        pinned=False,
        edited=False,
        retired_by=None,
        created_at=NOW,
        updated_at=NOW,
        updated_by=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_refresh_renews_untouched_entries_and_retires_the_ones_not_proposed() -> None:
    plan = plan_refresh([entry("a"), entry("b")], [draft("a", 3), draft("c")], per_pack=10)
    assert [(i, d.anchor) for i, d in plan.update] == [("e-a", "a")]
    assert [d.anchor for d in plan.insert] == ["c"]
    assert plan.retire == ["e-b"]


def test_touched_entries_stay_and_hold_their_place() -> None:
    existing = [
        entry("pinned", pinned=True),
        entry("edited", edited=True),
        entry("gone", state=EntryState.RETIRED, retired_by="carol"),
        entry("auto"),
    ]
    drafts = [draft(a) for a in ("pinned", "edited", "gone", "new1", "new2", "new3")]
    plan = plan_refresh(existing, drafts, per_pack=4)
    assert [d.anchor for d in plan.insert] == ["new1", "new2"]  # 4 - 2 kept
    assert plan.update == [] and plan.retire == ["e-auto"]
    touched = {"e-pinned", "e-edited", "e-gone"}
    assert not touched & ({i for i, _ in plan.update} | set(plan.retire))


def test_a_refresh_retired_case_may_come_back() -> None:
    plan = plan_refresh([entry("a", state=EntryState.RETIRED)], [draft("a")], per_pack=10)
    assert [d.anchor for d in plan.insert] == ["a"]


def test_guidelines_put_the_tasks_categories_first_and_hide_its_own_case_when_blind() -> None:
    entries = [
        entry("other", size=9, categories=("Violent",)),
        entry("mine", size=2, categories=("PII",)),
        entry("task-1", categories=("PII",)),
        entry("old", state=EntryState.RETIRED, categories=("PII",)),
    ]
    shown = guidelines_for(entries, ["PII"], "task-1", blind=False)
    assert [e.anchor for e in shown] == ["mine", "task-1", "other"]
    blind = guidelines_for(entries, ["PII"], "task-1", blind=True)
    assert [e.anchor for e in blind] == ["mine", "other"]
    many = [entry(f"e{i}") for i in range(GUIDELINE_CASES + 3)]
    assert len(guidelines_for(many, [], "x", blind=False)) == GUIDELINE_CASES


@given(title=st.text(max_size=TITLE_MAX + 5))
@example(title="")
@example(title=" \t ")
@example(title="x" * (TITLE_MAX + 1))
@example(title=" ok ")
def test_an_edit_is_stripped_and_bounded(title: str) -> None:
    if 1 <= len(title.strip()) <= TITLE_MAX:
        assert checked_edit(title, "why") == (title.strip(), "why")
    else:
        with pytest.raises(InvalidSubmission) as refused:
            checked_edit(title, "why")
        assert refused.value.field == "title"


def _item(task: str, vector: list[float], reason: str, pack: str = "default") -> CaseItem:
    return CaseItem(
        task_id=task,
        post_id=f"p-{task}",
        tenant="acme",
        pack=pack,
        lang="zh",
        vector=np.array(vector, dtype=np.float32),
        decided_at=NOW,
        human_verdict="unsafe" if reason == "slur" else "safe",
        model_verdict="controversial",
        corrected=True,
        categories=("PII",),
        reason=reason,
        preview=f"text {task}",
    )


def test_drafts_are_the_largest_clusters_per_pack_linked_to_their_items() -> None:
    items = [
        _item("a1", [1, 0, 0], "slur"),
        _item("a2", [0.98, 0.05, 0], "slur"),
        _item("a3", [0.97, 0, 0.05], "slur"),
        _item("b1", [0, 1, 0], "joke"),
        _item("c1", [0, 0, 1], "joke", pack="strict"),
    ]
    drafts = pick_cases(items, NOW, per_pack=10)
    assert [(d.pack, d.size) for d in drafts] == [("default", 3), ("default", 1), ("strict", 1)]
    big = drafts[0]
    assert set(big.task_ids) == {"a1", "a2", "a3"} and set(big.post_ids) == {"p-a1", "p-a2", "p-a3"}
    assert big.human_verdict == "unsafe" and big.reasons == ("slur",)
    assert big.anchor == big.task_ids[0] and len(big.title) <= TITLE_MAX
    assert len(pick_cases(items, NOW, per_pack=1)) == 2  # one per pack
    assert pack_id("default@3") == "default"
