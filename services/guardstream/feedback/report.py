"""The loop's health, from the archive and the training runs' model cards (pure + rendering).

Samples per week, disagreement rate by category and language, the share of `controversial`
model verdicts among reviewed items per week (its trend is what retraining should bend down),
reviewer agreement (first review vs a senior's QA review of the same content: the raw share
of equal labels and, beside it, Krippendorff's alpha — agreement corrected for what chance
alone would give — per reviewer, per category and overall), and the adapter history (held-out
and shadow metrics, and how each candidate ended). `render_html` writes one self-contained page
(tables and inline SVG bars, no assets).
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import krippendorff
import numpy as np

from guardstream.contracts.events import ReviewStage, Verdict
from guardstream.contracts.feedback import FeedbackSample


@dataclass(slots=True)
class Rate:
    hits: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else 0.0


_VERDICTS = tuple(Verdict)


def chance_corrected(pairs: Sequence[tuple[Verdict, Verdict]]) -> float | None:
    """Krippendorff's alpha (nominal) of (first label, senior label) pairs: 1 is perfect
    agreement, 0 what chance alone gives, below 0 systematic disagreement. None when it is
    undefined: no pair, or every label given is the same one (no variation to agree on — raw
    agreement says all there is). Raw agreement flatters a queue where one label dominates:
    two reviewers who both say `unsafe` 90% of the time at random agree on 82%."""
    if not pairs or len({label for pair in pairs for label in pair}) < 2:
        return None
    data = np.array(
        [[_VERDICTS.index(first) for first, _ in pairs], [_VERDICTS.index(qa) for _, qa in pairs]],
        dtype=float,
    )
    alpha = krippendorff.alpha(
        reliability_data=data,
        level_of_measurement="nominal",
        value_domain=list(range(len(_VERDICTS))),
    )
    return float(alpha)


@dataclass(slots=True)
class Agreement:
    """Raw agreement of QA pairs and its chance-corrected counterpart (`chance_corrected`)."""

    pairs: list[tuple[Verdict, Verdict]] = field(default_factory=list)

    @property
    def rate(self) -> Rate:
        return Rate(sum(a is b for a, b in self.pairs), len(self.pairs))

    @property
    def alpha(self) -> float | None:
        return chance_corrected(self.pairs)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"checked": len(self.pairs), "agreement": self.rate.value, "alpha": self.alpha}


@dataclass(slots=True)
class LoopReport:
    per_week: dict[str, int] = field(default_factory=dict)
    controversial_by_week: dict[str, Rate] = field(default_factory=dict)
    disagreement_by_category: dict[str, Rate] = field(default_factory=dict)
    disagreement_by_lang: dict[str, Rate] = field(default_factory=dict)
    reviewer_agreement: dict[str, Agreement] = field(default_factory=dict)
    category_agreement: dict[str, Agreement] = field(default_factory=dict)
    overall_agreement: Agreement = field(default_factory=Agreement)
    adapters: list[dict[str, Any]] = field(default_factory=list)


def _week(sample: FeedbackSample) -> str:
    year, week, _ = sample.reviewed_at.isocalendar()
    return f"{year}-W{week:02d}"


def build_report(samples: Sequence[FeedbackSample], cards: Iterable[dict[str, Any]]) -> LoopReport:
    report = LoopReport()
    weeks: Counter[str] = Counter()
    controversial: dict[str, Rate] = defaultdict(Rate)
    by_category: dict[str, Rate] = defaultdict(Rate)
    by_lang: dict[str, Rate] = defaultdict(Rate)
    first: dict[str, FeedbackSample] = {}
    qa: dict[str, FeedbackSample] = {}
    for s in samples:
        if s.stage is ReviewStage.QA:
            qa[s.content_key] = s
            continue
        first[s.content_key] = s
        week = _week(s)
        weeks[week] += 1
        controversial[week].total += 1
        controversial[week].hits += s.pred_verdict is Verdict.CONTROVERSIAL
        for category in set(s.pred_categories) | set(s.human_categories) or {"(none)"}:
            by_category[category].total += 1
            by_category[category].hits += s.disagrees
        lang = s.lang or "(unknown)"
        by_lang[lang].total += 1
        by_lang[lang].hits += s.disagrees
    agreement: dict[str, Agreement] = defaultdict(Agreement)
    category_agreement: dict[str, Agreement] = defaultdict(Agreement)
    for key, senior in qa.items():
        original = first.get(key)
        if original is None:
            continue
        pair = (original.human_verdict, senior.human_verdict)
        agreement[original.reviewer].pairs.append(pair)
        # A pair counts for every category either reviewer named (as disagreement does).
        named = set(original.human_categories) | set(senior.human_categories)
        for category in named or {"(none)"}:
            category_agreement[category].pairs.append(pair)
        report.overall_agreement.pairs.append(pair)
    report.per_week = dict(sorted(weeks.items()))
    report.controversial_by_week = dict(sorted(controversial.items()))
    report.disagreement_by_category = dict(sorted(by_category.items()))
    report.disagreement_by_lang = dict(sorted(by_lang.items()))
    report.reviewer_agreement = dict(sorted(agreement.items()))
    report.category_agreement = dict(sorted(category_agreement.items()))
    report.adapters = sorted(cards, key=lambda c: str(c.get("data_window", {}).get("until")))
    return report


def read_cards(root: Path) -> list[dict[str, Any]]:
    runs = root / "runs"
    if not runs.is_dir():
        return []
    return [
        json.loads(card.read_text(encoding="utf-8"))
        for card in sorted(runs.glob("*/model_card.json"))
    ]


# Shadow columns: content keys scored in shadow (of which human-labelled), accuracy and
# false-positive rate against those labels (serving → candidate), agreement with serving.
ADAPTER_COLUMNS = (
    "adapter",
    "data until",
    "curated",
    "held-out acc",
    "shadow n (labelled)",
    "shadow acc",
    "shadow FPR",
    "agreement",
    "outcome",
)


def adapter_outcome(card: dict[str, Any]) -> str:
    """Where the adapter's history ended: promoted (after shadow), in shadow, retired from
    shadow (lost, ran out of time, or superseded), or rejected on the held-out set."""
    if card.get("promoted"):
        return "promoted"
    ended = card.get("shadow_outcome")
    if isinstance(ended, dict):
        return str(ended.get("outcome", "retired"))
    if card.get("held_out_passed"):
        return "in shadow"
    return "rejected"


def adapter_row(card: dict[str, Any]) -> tuple[str, ...]:
    metrics = card.get("metrics", {})
    held = metrics.get("candidate_held_out", {})
    before = metrics.get("current_held_out", {})
    shadow = card.get("shadow") or {}
    return (
        str(card.get("adapter_id", "?")),
        str(card.get("data_window", {}).get("until", "?")),
        str(card.get("counts", {}).get("curated", "?")),
        f"{before.get('accuracy', 0):.3f} → {held.get('accuracy', 0):.3f}" if held else "-",
        f"{shadow['shadowed']} ({shadow['labelled']})" if shadow else "-",
        f"{shadow['serving_accuracy']:.3f} → {shadow['candidate_accuracy']:.3f}" if shadow else "-",
        f"{shadow['serving_false_positive_rate']:.3f} → "
        f"{shadow['candidate_false_positive_rate']:.3f}"
        if shadow
        else "-",
        f"{shadow['agreement']:.0%}" if shadow else "-",
        adapter_outcome(card),
    )


def _bars(rates: dict[str, Rate]) -> str:
    rows = []
    for i, (name, rate) in enumerate(rates.items()):
        y = i * 22
        width = round(rate.value * 300)
        rows.append(
            f'<text x="0" y="{y + 15}">{html.escape(name)}</text>'
            f'<rect x="220" y="{y + 3}" width="{width}" height="16" fill="#c0392b"/>'
            f'<text x="{225 + width}" y="{y + 15}">{rate.value:.0%} of {rate.total}</text>'
        )
    height = max(22 * len(rates), 22)
    return f'<svg width="640" height="{height}" font-size="12">{"".join(rows)}</svg>'


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{cells}</table>"


def render_html(report: LoopReport) -> str:
    weeks = [
        (week, n, f"{report.controversial_by_week[week].value:.0%}")
        for week, n in report.per_week.items()
    ]

    def alpha(a: Agreement) -> str:
        value = a.alpha
        return "–" if value is None else f"{value:.2f}"

    agreement = [
        (r, f"{a.rate.value:.0%}", alpha(a), len(a.pairs))
        for r, a in report.reviewer_agreement.items()
    ]
    by_category = [
        (c, f"{a.rate.value:.0%}", alpha(a), len(a.pairs))
        for c, a in report.category_agreement.items()
    ]
    overall = report.overall_agreement
    return (
        "<!doctype html><meta charset='utf-8'><title>guardstream feedback loop</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;"
        "border-bottom:1px solid #ddd;text-align:left}</style>"
        "<h1>Feedback loop</h1><h2>Reviewed samples per week</h2>"
        + _table(["week", "samples", "model said controversial"], weeks)
        + "<h2>Disagreement (human ≠ model) by category</h2>"
        + _bars(report.disagreement_by_category)
        + "<h2>Disagreement by language</h2>"
        + _bars(report.disagreement_by_lang)
        + f"<h2>Reviewer agreement with QA: {overall.rate.value:.0%} of {len(overall.pairs)}, "
        f"Krippendorff's alpha {alpha(overall)}</h2>"
        + "<p>alpha: agreement beyond chance (1 perfect, 0 chance, – undefined: one label "
        "only)</p>"
        + _table(["reviewer", "agreement", "alpha", "QA-checked"], agreement)
        + "<h2>Reviewer agreement by category</h2>"
        + _table(["category", "agreement", "alpha", "QA-checked"], by_category)
        + "<h2>Adapters</h2>"
        + _table(ADAPTER_COLUMNS, map(adapter_row, report.adapters))
    )
