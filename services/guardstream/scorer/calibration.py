"""Is the model's confidence a probability? Reliability tables and expected calibration error.

Input: labelled JSONL, one reviewed item per line, as the feedback archive writes it. Field
names accepted (first present wins): predicted label `pred_label` | `pred` | `verdict`;
confidence of that prediction `pred_confidence` | `confidence`; true label `human_label` |
`label`; optional `lang` and `pred_categories` | `categories` (a list, or a comma-separated
string). Labels are compared case-insensitively (`unsafe` == `Unsafe`). A line that is not a
JSON object, lacks a field, or has a confidence outside [0, 1] is reported with its line
number and left out, never silently.

Confidence bins are equal-width over [0, 1]; ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|.
Per language and per category (an item counts once in each of its predicted categories;
`none` when it has none) the same is computed over that slice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from guardstream.contracts.errors import PermanentError


class BadLine(PermanentError):
    """A JSONL line that cannot be used; the message says why (never its content)."""


@dataclass(frozen=True, slots=True)
class Labelled:
    predicted: str
    confidence: float
    truth: str
    lang: str
    categories: tuple[str, ...]

    @property
    def correct(self) -> bool:
        return self.predicted == self.truth


@dataclass(frozen=True, slots=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float  # mean confidence in the bin (0 when empty)
    accuracy: float  # share correct in the bin (0 when empty)


@dataclass(frozen=True, slots=True)
class Reliability:
    bins: tuple[Bin, ...]
    count: int
    ece: float
    accuracy: float


def _first(row: dict[str, object], *names: str) -> object:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def parse_line(raw: bytes) -> Labelled:
    """One JSONL line → a labelled item; `BadLine` says what is wrong."""
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadLine("not JSON") from exc
    if not isinstance(row, dict):
        raise BadLine("not a JSON object")
    predicted = _first(row, "pred_label", "pred", "verdict")
    truth = _first(row, "human_label", "label")
    confidence = _first(row, "pred_confidence", "confidence")
    if not isinstance(predicted, str) or not isinstance(truth, str):
        raise BadLine("missing predicted or human label")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise BadLine("missing confidence")
    if not 0.0 <= float(confidence) <= 1.0:
        raise BadLine("confidence outside [0, 1]")
    raw_categories = _first(row, "pred_categories", "categories")
    if isinstance(raw_categories, str):
        items = [c.strip() for c in raw_categories.split(",")]
    elif isinstance(raw_categories, list):
        items = [str(c).strip() for c in raw_categories]
    else:
        items = []
    lang = _first(row, "lang")
    return Labelled(
        predicted=predicted.strip().casefold(),
        confidence=float(confidence),
        truth=truth.strip().casefold(),
        lang=lang if isinstance(lang, str) and lang else "unknown",
        categories=tuple(c for c in items if c and c.casefold() != "none"),
    )


def load(path: Path) -> tuple[list[Labelled], list[tuple[int, str]]]:
    """(usable items, (line number, problem) for every line left out)."""
    items: list[Labelled] = []
    problems: list[tuple[int, str]] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                items.append(parse_line(raw))
            except BadLine as exc:
                problems.append((number, str(exc)))
    return items, problems


def reliability(items: Iterable[Labelled], bins: int = 10) -> Reliability:
    edges = [i / bins for i in range(bins + 1)]
    counts = [0] * bins
    confidence = [0.0] * bins
    correct = [0] * bins
    total = 0
    for item in items:
        index = min(int(item.confidence * bins), bins - 1)  # 1.0 falls in the last bin
        counts[index] += 1
        confidence[index] += item.confidence
        correct[index] += item.correct
        total += 1
    rows = tuple(
        Bin(
            edges[i],
            edges[i + 1],
            counts[i],
            confidence[i] / counts[i] if counts[i] else 0.0,
            correct[i] / counts[i] if counts[i] else 0.0,
        )
        for i in range(bins)
    )
    ece = sum(b.count / total * abs(b.accuracy - b.confidence) for b in rows) if total else 0.0
    accuracy = sum(correct) / total if total else 0.0
    return Reliability(rows, total, ece, accuracy)


def slices(items: list[Labelled]) -> Iterator[tuple[str, str, list[Labelled]]]:
    """("lang" | "category", value, items) for every language and predicted category."""
    by_lang: dict[str, list[Labelled]] = defaultdict(list)
    by_category: dict[str, list[Labelled]] = defaultdict(list)
    for item in items:
        by_lang[item.lang].append(item)
        for category in item.categories or ("none",):
            by_category[category].append(item)
    for lang in sorted(by_lang):
        yield "lang", lang, by_lang[lang]
    for category in sorted(by_category):
        yield "category", category, by_category[category]
