"""Clusters of contested posts (issue 22, "contested-case report"): the decided review items
where the model was unsure (controversial) or the reviewer corrected it, grouped per tenant and
language by the meaning of their text, so the most frequent kinds of contested content - and
whether each is rising - can shape the guidance users see before they post.

Vectors are the review store's sentence embeddings (`verdict/embeddings.py`); the grouping is
scikit-learn's agglomerative clustering with average linkage on cosine distance, cut at
`DISTANCE` (no number of clusters to guess: a new kind of content makes a new cluster). Pure:
items in, clusters out; `render_html` makes the page (an inline SVG plot, every value escaped).
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from guardstream.verdict.embeddings import Vectors, normalised

# Average cosine distance at which clusters stop merging: translations and paraphrases of one
# post sit at 0.1-0.25 (USE multilingual v3), unrelated posts at 0.85-1.0.
DISTANCE = 0.5
EXAMPLES = 3  # items shown per cluster: those nearest its centre
MAX_ITEMS = 5_000  # per tenant and language: the newest (average linkage is quadratic)


@dataclass(frozen=True, slots=True)
class ContestedItem:
    task_id: str
    tenant: str
    lang: str
    vector: Vectors
    decided_at: datetime
    human_verdict: str
    model_verdict: str
    corrected: bool
    reason: str | None
    preview: str | None


@dataclass(frozen=True, slots=True)
class Cluster:
    tenant: str
    lang: str
    size: int
    recent: int  # decided in the last window
    previous: int  # decided in the window before it
    verdicts: dict[str, int]  # human verdict -> count
    corrected: int
    reasons: list[tuple[str, int]]  # the most frequent reasons
    examples: list[ContestedItem] = field(default_factory=list)
    members: tuple[str, ...] = ()  # every item's task id, nearest the centre first

    @property
    def trend(self) -> str:
        if self.recent > self.previous:
            return "rising"
        if self.recent < self.previous:
            return "falling"
        return "steady"


def cluster_items(
    items: Sequence[ContestedItem],
    now: datetime,
    *,
    window: timedelta = timedelta(days=7),
    distance: float = DISTANCE,
    min_size: int = 2,
    top: int = 10,
) -> list[Cluster]:
    """The `top` largest clusters of at least `min_size` items per tenant and language,
    largest first (ties: most recent first)."""
    groups: dict[tuple[str, str], list[ContestedItem]] = defaultdict(list)
    for item in items:
        groups[(item.tenant, item.lang)].append(item)
    out: list[Cluster] = []
    for _, members in sorted(groups.items()):
        members = sorted(members, key=lambda i: i.decided_at, reverse=True)[:MAX_ITEMS]
        found = [c for c in _group(members, now, window, distance) if c.size >= min_size]
        found.sort(key=lambda c: (-c.size, -c.recent))
        out.extend(found[:top])
    return out


def _group(
    members: list[ContestedItem], now: datetime, window: timedelta, distance: float
) -> list[Cluster]:
    matrix = normalised(np.stack([m.vector for m in members]).astype(np.float32))
    if len(members) == 1:
        labels = np.zeros(1, dtype=int)
    else:
        # lazy: importing scikit-learn takes seconds, and only this report clusters
        from sklearn.cluster import AgglomerativeClustering

        labels = AgglomerativeClustering(
            n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance
        ).fit_predict(matrix)
    clusters = []
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        part = [members[i] for i in rows]
        centre = matrix[rows].mean(axis=0)
        ordered = rows[np.argsort(-(matrix[rows] @ centre), kind="stable")]
        nearest = ordered[:EXAMPLES]
        reasons = Counter(m.reason for m in part if m.reason)
        clusters.append(
            Cluster(
                tenant=part[0].tenant,
                lang=part[0].lang,
                size=len(part),
                recent=sum(now - window <= m.decided_at for m in part),
                previous=sum(now - 2 * window <= m.decided_at < now - window for m in part),
                verdicts=dict(sorted(Counter(m.human_verdict for m in part).items())),
                corrected=sum(m.corrected for m in part),
                reasons=reasons.most_common(3),
                examples=[members[i] for i in nearest],
                members=tuple(members[i].task_id for i in ordered),
            )
        )
    return clusters


def as_json(clusters: Sequence[Cluster]) -> list[dict[str, object]]:
    return [
        {
            "tenant": c.tenant,
            "lang": c.lang,
            "size": c.size,
            "recent": c.recent,
            "previous": c.previous,
            "trend": c.trend,
            "verdicts": c.verdicts,
            "corrected": c.corrected,
            "reasons": [{"reason": r, "count": n} for r, n in c.reasons],
            "examples": [
                {
                    "task_id": e.task_id,
                    "human_verdict": e.human_verdict,
                    "model_verdict": e.model_verdict,
                    "reason": e.reason,
                    "preview": e.preview,
                }
                for e in c.examples
            ],
        }
        for c in clusters
    ]


_BAR_H = 18
_PLOT_W = 420


def render_html(clusters: Sequence[Cluster], generated_at: datetime) -> str:
    """A standalone page: a bar plot (inline SVG: each cluster's items, the last window's
    darker) and a table of the clusters with examples. No script, every value escaped."""
    e = html.escape
    widest = max((c.size for c in clusters), default=1)
    bars = []
    for n, c in enumerate(clusters):
        y = n * (_BAR_H + 6)
        w_all = max(1, round(_PLOT_W * c.size / widest))
        w_recent = round(_PLOT_W * c.recent / widest)
        head = c.examples[0].preview if c.examples and c.examples[0].preview else ""
        bars.append(
            f'<g transform="translate(0,{y})"><text x="0" y="13">{e(c.tenant)} · {e(c.lang)}'
            f' #{n + 1}</text><rect x="160" y="0" width="{w_all}" height="{_BAR_H}"'
            f' fill="#b0bec5"><title>{e(head[:80])}</title></rect><rect x="160" y="0"'
            f' width="{w_recent}" height="{_BAR_H}" fill="#c62828"/><text x="{170 + w_all}"'
            f' y="13">{c.size} ({c.recent} recent, {e(c.trend)})</text></g>'
        )
    height = max(1, len(clusters)) * (_BAR_H + 6)
    rows = []
    for n, c in enumerate(clusters):
        examples = "".join(
            f"<li><b>{e(x.human_verdict)}</b> (model {e(x.model_verdict)})"
            f"{' — ' + e(x.reason) if x.reason else ''}"
            f"{'<br><span class=p>' + e(x.preview) + '</span>' if x.preview else ''}</li>"
            for x in c.examples
        )
        verdicts = ", ".join(f"{e(k)} {v}" for k, v in c.verdicts.items())
        reasons = ", ".join(f"{e(r)} ×{k}" for r, k in c.reasons) or "–"
        rows.append(
            f"<tr><td>{n + 1}</td><td>{e(c.tenant)}</td><td>{e(c.lang)}</td><td>{c.size}</td>"
            f"<td>{c.recent} / {c.previous} ({e(c.trend)})</td><td>{verdicts}</td>"
            f"<td>{c.corrected}</td><td>{reasons}</td><td><ol>{examples}</ol></td></tr>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>guardstream · contested-case clusters</title><style>"
        "body{font:14px/1.4 system-ui,sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}"
        ".p{color:#555;overflow-wrap:anywhere}</style></head><body>"
        f"<h1>Contested-case clusters</h1><p>generated {e(generated_at.isoformat())}:"
        f" {len(clusters)} clusters of contested review items (model controversial or"
        " corrected by a reviewer), largest first; red: decided in the last window.</p>"
        f'<svg id="plot" width="{_PLOT_W + 320}" height="{height}" role="img"'
        f' aria-label="cluster sizes">{"".join(bars)}</svg>'
        "<table><tr><th>#</th><th>tenant</th><th>lang</th><th>items</th>"
        "<th>recent / previous</th><th>human verdicts</th><th>corrected</th><th>reasons</th>"
        f"<th>examples</th></tr>{''.join(rows)}</table></body></html>"
    )
