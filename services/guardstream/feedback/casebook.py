"""The casebook's proposals (争议案例手册, issue 22): per tenant and policy pack, the largest
clusters of contested decisions (`clusters.py`: the model was unsure, or a reviewer corrected
it), each one case with its decided label, the reviewers' reasons and its source items.

Pure: items in, drafts out. The review store decides what a draft may replace (pinned, edited
and senior-retired entries are never touched: `review/casebook.py`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from guardstream.contracts.casebook import REASONING_MAX, TITLE_MAX, CaseDraft
from guardstream.feedback.clusters import ContestedItem, cluster_items
from guardstream.verdict.embeddings import Vectors

PER_PACK = 10  # cases proposed per tenant and pack
SOURCES_MAX = 50  # source items an entry links to (nearest the centre first)


@dataclass(frozen=True, slots=True)
class CaseItem:
    """A contested decided task with what a case shows of it."""

    task_id: str
    post_id: str
    tenant: str
    pack: str
    lang: str
    vector: Vectors
    decided_at: datetime
    human_verdict: str
    model_verdict: str
    corrected: bool
    categories: tuple[str, ...]
    reason: str | None
    preview: str | None


def pack_id(policy_ref: str) -> str:
    """`default@3` → `default`: a casebook spans a pack's versions."""
    return policy_ref.split("@", 1)[0]


def pick_cases(
    items: Sequence[CaseItem], now: datetime, *, per_pack: int = PER_PACK
) -> list[CaseDraft]:
    """At most `per_pack` drafts per tenant and pack, the largest clusters first (a cluster of
    one is a case too when there are fewer clusters than that)."""
    groups: dict[tuple[str, str], list[CaseItem]] = defaultdict(list)
    for item in items:
        groups[(item.tenant, item.pack)].append(item)
    drafts: list[CaseDraft] = []
    for (tenant, pack), members in sorted(groups.items()):
        by_id = {m.task_id: m for m in members}
        contested = [
            ContestedItem(
                task_id=m.task_id,
                tenant=tenant,
                lang=m.lang,
                vector=m.vector,
                decided_at=m.decided_at,
                human_verdict=m.human_verdict,
                model_verdict=m.model_verdict,
                corrected=m.corrected,
                reason=m.reason,
                preview=m.preview,
            )
            for m in members
        ]
        found = cluster_items(contested, now, min_size=1, top=per_pack)
        found.sort(key=lambda c: (-c.size, -c.recent, c.members[0]))
        for cluster in found[:per_pack]:
            part = [by_id[t] for t in cluster.members[:SOURCES_MAX]]
            drafts.append(_draft(tenant, pack, cluster.lang, part, cluster.size))
    return drafts


def _draft(tenant: str, pack: str, lang: str, part: list[CaseItem], size: int) -> CaseDraft:
    anchor = part[0]
    verdicts = Counter(m.human_verdict for m in part)
    verdict = verdicts.most_common(1)[0][0]
    categories = Counter(c for m in part for c in m.categories)
    reasons = [r for r, _ in Counter(m.reason for m in part if m.reason).most_common(3)]
    corrected = sum(m.corrected for m in part)
    about = reasons[0] if reasons else (anchor.preview or "")[:60]
    top_category = categories.most_common(1)[0][0] if categories else "no category"
    title = f"{verdict} · {top_category}" + (f" — {about}" if about else "")
    labels = ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
    reasoning = (
        f"{size} contested decision{'s' if size != 1 else ''} ({corrected} corrected the"
        f" model); human labels: {labels}."
        + (" Reviewers' reasons: " + "; ".join(reasons) + "." if reasons else "")
    )
    return CaseDraft(
        tenant=tenant,
        pack=pack,
        lang=lang,
        anchor=anchor.task_id,
        title=title[:TITLE_MAX],
        reasoning=reasoning[:REASONING_MAX],
        human_verdict=verdict,
        verdicts=dict(sorted(verdicts.items())),
        categories=tuple(c for c, _ in categories.most_common()),
        reasons=tuple(reasons),
        excerpt=anchor.preview,
        size=size,
        task_ids=tuple(m.task_id for m in part),
        post_ids=tuple(m.post_id for m in part),
    )
