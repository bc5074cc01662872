"""Reading Qwen3Guard-Gen's answer: `Safety:` / `Categories:` / `Refusal:` lines → a verdict,
and the `Reason:` line an adapter trained on reviewers' reasons adds (`feedback/dataset.py`).

The parser is strict about structure and lenient about spacing and case: exactly one `Safety:`
line with a known label, otherwise the answer is unusable and the verdict is `controversial`
(humans look at it) — never `safe`. Categories are matched as whole comma-separated items
against the model's fixed list, so "Non-violent Illegal Acts" never counts as "Violent".
The reason line is optional and never decides anything: absent, empty or malformed, it is
ignored (`rationale` None); present, it is cleaned of control characters and prompt
structure and cut to `RATIONALE_MAX` characters, like any text a model writes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from guardstream.contracts.events import REVIEW_REASON_MAX, Label, Verdict
from guardstream.contracts.labels import CATEGORIES, LABEL_VERDICT, LABELS
from guardstream.contracts.text import neutralise

_CANONICAL = {c.casefold(): c for c in CATEGORIES}
_LINE = re.compile(r"^\s*(safety|categories|refusal|reason)\s*:\s*(.*?)\s*$", re.IGNORECASE)
# A taught reason is at most REVIEW_REASON_MAX characters; room for a model that runs on a
# little, not for a model that rambles (the decision's reason field holds 500).
RATIONALE_MAX = 2 * REVIEW_REASON_MAX
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")


def rationale(value: str) -> str | None:
    """A `Reason:` line's value as a decision may carry it: control characters, lone
    surrogates and replacement characters (a cut multi-byte token) become spaces, prompt
    structure is neutralised, whitespace collapsed, at most `RATIONALE_MAX` characters; None
    when nothing readable is left."""
    text = " ".join(_UNPRINTABLE.sub(" ", neutralise(value)).split())
    return text[:RATIONALE_MAX].rstrip() or None


@dataclass(frozen=True, slots=True)
class GuardAnswer:
    """What the model said. `label` is None when the answer is unusable (see `problem`)."""

    label: Label | None
    categories: tuple[str, ...] = ()
    refusal: bool | None = None
    unknown_categories: tuple[str, ...] = ()
    problem: str | None = None
    rationale: str | None = None  # the model's own `Reason:` line (see `rationale`)

    @property
    def verdict(self) -> Verdict:
        return Verdict.CONTROVERSIAL if self.label is None else LABEL_VERDICT[self.label]


def parse_answer(text: str) -> GuardAnswer:
    safety: list[str] = []
    categories: list[str] = []
    refusal: list[str] = []
    reasons: list[str] = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        field, value = match.group(1).casefold(), match.group(2)
        fields = {"safety": safety, "categories": categories, "refusal": refusal}
        fields.get(field, reasons).append(value)

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
    # Only an unambiguous reason is kept: two reason lines say neither is the answer's.
    why = rationale(reasons[0]) if len(reasons) == 1 else None
    return GuardAnswer(label, tuple(known), refused, tuple(unknown), rationale=why)


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
