"""A proposed casebook entry (争议案例手册, issue 22): one cluster of contested decisions of a
tenant and pack, as the feedback job hands it to the review store (`guardstream feedback
casebook`). The review side decides whether it replaces an entry (`review/casebook.py`)."""

from __future__ import annotations

from dataclasses import dataclass

TITLE_MAX = 120
REASONING_MAX = 2000


@dataclass(frozen=True, slots=True)
class CaseDraft:
    tenant: str
    pack: str  # the policy pack's id, without its version
    lang: str
    anchor: str  # the task nearest the cluster's centre: the entry's identity across refreshes
    title: str
    reasoning: str
    human_verdict: str  # the cluster's most frequent human label
    verdicts: dict[str, int]
    categories: tuple[str, ...]
    reasons: tuple[str, ...]  # the reviewers' most frequent reasons
    excerpt: str | None  # the anchor's text preview
    size: int
    task_ids: tuple[str, ...]  # source items, nearest the centre first
    post_ids: tuple[str, ...]
