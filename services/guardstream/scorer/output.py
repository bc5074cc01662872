"""Reading Qwen3Guard-Gen's answer: `Safety:` / `Categories:` / `Refusal:` lines → a verdict,
and the `Reason:` line an adapter trained on reviewers' reasons adds (`feedback/dataset.py`).

The parser is strict about structure and lenient about spacing and case: exactly one `Safety:`
line with a known label, otherwise the answer is unusable and the verdict is `controversial`
(humans look at it) — never `safe`. Categories are matched as whole comma-separated items
against the policy pack's list (Qwen3Guard's nine unless the request carries the pack's own),
names or translations alike, read back as the canonical name; so "Non-violent Illegal Acts"
never counts as "Violent". An item outside the list is kept as `other:<item>` (bounded,
neutralised, control characters dropped) and makes the verdict at least `controversial`: the
model named a harm the pack does not know, which a person should see.
The reason line is optional and never decides anything: absent, empty or malformed, it is
ignored (`rationale` None); present, it is cleaned of control characters and prompt
structure and cut to `RATIONALE_MAX` characters, like any text a model writes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from guardstream.contracts.categories import (
    DEFAULT_LOOKUP,
    OTHER_MAX,
    OTHER_PREFIX,
    CategoryDef,
    spelling_lookup,
)
from guardstream.contracts.events import REVIEW_REASON_MAX, Label, Verdict
from guardstream.contracts.labels import LABEL_VERDICT, LABELS
from guardstream.contracts.text import neutralise, normalise

_LINE = re.compile(r"^\s*(safety|categories|refusal|reason)\s*:\s*(.*?)\s*$", re.IGNORECASE)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")
# A decision holds at most 32 categories; an answer listing more is cut here, in its order.
_MAX_CATEGORIES = 16
# A taught reason is at most REVIEW_REASON_MAX characters; room for a model that runs on a
# little, not for a model that rambles (the decision's reason field holds 500).
RATIONALE_MAX = 2 * REVIEW_REASON_MAX


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
        if self.label is None:
            return Verdict.CONTROVERSIAL
        said = LABEL_VERDICT[self.label]
        if self.unknown_categories and said is Verdict.SAFE:
            return Verdict.CONTROVERSIAL  # a harm outside the pack's list is never safe
        return said


def other_category(item: str) -> str | None:
    """`other:<item>` for a category outside the pack's list, within a decision's 64
    characters, without control characters or prompt structure (None: nothing printable)."""
    cleaned = _UNPRINTABLE.sub("", neutralise(normalise(item))).strip()[:OTHER_MAX].strip()
    return f"{OTHER_PREFIX}{cleaned}" if cleaned else None


def parse_answer(text: str, pack_categories: Sequence[CategoryDef] | None = None) -> GuardAnswer:
    """`pack_categories`: the pack's list the request carried (None: Qwen3Guard's nine)."""
    lookup = DEFAULT_LOOKUP if not pack_categories else spelling_lookup(pack_categories)
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
        # A model answering in Chinese may separate with "，" and end with "。".
        for item in (part.strip().rstrip(".。") for part in re.split("[,，]", value)):
            if not item or item.casefold() == "none":
                continue
            canonical = lookup.get(item.casefold())
            if canonical is None:
                canonical = other_category(item)
                if canonical is None or len(unknown) >= _MAX_CATEGORIES:
                    continue
                if canonical not in unknown:
                    unknown.append(canonical)
            if canonical not in known and len(known) < _MAX_CATEGORIES:
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
