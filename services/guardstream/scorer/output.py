"""Reading Qwen3Guard-Gen's answer: `Safety:` / `Categories:` / `Refusal:` lines → a verdict.

The parser is strict about structure and lenient about spacing and case: exactly one `Safety:`
line with a known label, otherwise the answer is unusable and the verdict is `controversial`
(humans look at it) — never `safe`. Categories are matched as whole comma-separated items
against the model's fixed list, so "Non-violent Illegal Acts" never counts as "Violent".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from guardstream.contracts.events import Label, Verdict
from guardstream.contracts.labels import CATEGORIES, LABEL_VERDICT, LABELS

_CANONICAL = {c.casefold(): c for c in CATEGORIES}
_LINE = re.compile(r"^\s*(safety|categories|refusal)\s*:\s*(.*?)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GuardAnswer:
    """What the model said. `label` is None when the answer is unusable (see `problem`)."""

    label: Label | None
    categories: tuple[str, ...] = ()
    refusal: bool | None = None
    unknown_categories: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def verdict(self) -> Verdict:
        return Verdict.CONTROVERSIAL if self.label is None else LABEL_VERDICT[self.label]


def parse_answer(text: str) -> GuardAnswer:
    safety: list[str] = []
    categories: list[str] = []
    refusal: list[str] = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        field, value = match.group(1).casefold(), match.group(2)
        {"safety": safety, "categories": categories, "refusal": refusal}[field].append(value)

    if not safety:
        return GuardAnswer(None, problem="no Safety line")
    if len(safety) > 1:
        return GuardAnswer(None, problem="more than one Safety line")
    label = next((lab for lab in LABELS if lab.casefold() == safety[0].casefold()), None)
    if label is None:
        return GuardAnswer(None, problem="unknown Safety label")

    known: list[str] = []
    unknown: list[str] = []
    for value in categories[:1]:
        for item in (part.strip().rstrip(".") for part in value.split(",")):
            if not item or item.casefold() == "none":
                continue
            canonical = _CANONICAL.get(item.casefold())
            if canonical is None:
                unknown.append(item)
            elif canonical not in known:
                known.append(canonical)

    refused: bool | None = None
    if refusal:
        refused = {"yes": True, "no": False}.get(refusal[0].casefold())
    return GuardAnswer(label, tuple(known), refused, tuple(unknown))


def label_confidence(label: Label, label_logprobs: Mapping[Label, float | None]) -> float | None:
    """P(label) renormalised over the three label tokens at the label position.

    Labels missing from the returned top-k carry no mass (their probability is below the
    k-th token's, so the error this introduces is bounded by k-th probability).
    """
    chosen = label_logprobs.get(label)
    if chosen is None:
        return None
    present = [lp for lp in label_logprobs.values() if lp is not None]
    top = max(present)
    total = sum(math.exp(lp - top) for lp in present)
    return math.exp(chosen - top) / total
