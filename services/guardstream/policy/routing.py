"""From a model verdict to an action under a policy pack: pure, ordered rules.

Precedence, first match wins (`Routed.rule` in the second column). The pack's own `rules`
(`policy/rules.py`, rule `rule:<id>`, any action) come first; when none matches, the built-in
rules below decide, so one function decides every model verdict:

| # | rule                            | when                                     | action          |
|---|---------------------------------|------------------------------------------|-----------------|
| 0 | `rule:<id>`                     | the pack's first matching rule           | the rule's      |
| 1 | `always_block:<Category>`       | a category in `always_block`             | block           |
| 2 | `always_review:<Category>`      | a category in `always_review`            | review          |
| 3 | `no_confidence:<verdict>`       | no usable confidence (None, NaN, not in  | review          |
|   |                                 | 0..1) and the verdict is not safe, or it |                 |
|   |                                 | is safe and `review_below.safe` is set   |                 |
| 4 | `low_confidence:<verdict><0.70` | confidence < `review_below.<verdict>`    | review          |
| 5 | `controversial:<mode>`          | verdict controversial                    | strict → block  |
|   |                                 |                                          | review → review |
|   |                                 |                                          | loose → allow   |
| 6 | `verdict`                       | otherwise                                | safe → allow    |
|   |                                 |                                          | unsafe → block  |

Category rules come first because they are the team's explicit word on a kind of harm; they
fire on any verdict that names the category. Rule 3 is what keeps unusable model output (it
arrives as `controversial` with no confidence) from ever being allowed, whatever the pack says:
only rule 5 with `loose` allows a controversial verdict, and rule 3 is checked before it. An
unsafe verdict is never allowed by any pack. Explanations are built only from the inputs and
the pack, so they never claim more than the model and the team said.

`route` is for model verdicts (fresh or cached). A human verdict is final and must not be
routed again, or a `safe` from a reviewer without a confidence would loop back to review.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from guardstream.contracts.events import Action, AuthorHistory, Verdict
from guardstream.policy.pack import ControversialMode, PolicyPack, ScorerUnavailableMode
from guardstream.policy.rules import describe, first_match


@dataclass(frozen=True, slots=True)
class Routed:
    """An action with the rule that chose it (machine-readable) and why (for people)."""

    action: Action
    rule: str
    explanation: str


@dataclass(frozen=True, slots=True)
class ReviewSla:
    """How long review may take for one post, and when to warn that it is running late."""

    deadline_s: int
    warn_after_s: int
    assign_within_s: int = 900


_CONTROVERSIAL_ACTION = {
    ControversialMode.STRICT: Action.BLOCK,
    ControversialMode.REVIEW: Action.REVIEW,
    ControversialMode.LOOSE: Action.ALLOW,
}
_CONTROVERSIAL_POLICY = {
    ControversialMode.STRICT: "blocks controversial content",
    ControversialMode.REVIEW: "sends controversial content to human review",
    ControversialMode.LOOSE: "allows controversial content",
}
_VERDICT_ACTION = {Verdict.SAFE: Action.ALLOW, Verdict.UNSAFE: Action.BLOCK}
EXPLANATION_MAX = 500
_DONE = {
    Action.ALLOW: "Allowed",
    Action.BLOCK: "Blocked",
    Action.REVIEW: "Sent to review",
    Action.LIMIT: "Published with limited distribution",
    Action.WARN: "Published with a warning to the author",
    Action.REMOVE: "Removed",
    Action.HOLD: "Held unpublished for review",
}


# (pack identity, verdict, confidence, categories) → (the pack, its route). Repeated content
# repeats its cached verdict, so triage routes the same few inputs again and again; the pack
# is kept with its route, so an id reused by another pack object never answers for it. The
# confidence is keyed by its repr: equal floats that read differently (0.0 and -0.0) are
# explained differently.
_ROUTES: dict[
    tuple[int, Verdict, str, tuple[str, ...], AuthorHistory | None], tuple[PolicyPack, Routed]
] = {}
_ROUTES_KEPT = 4096


def route(
    pack: PolicyPack,
    verdict: Verdict,
    confidence: float | None,
    categories: Sequence[str],
    history: AuthorHistory | None = None,
) -> Routed:
    """The action for one model verdict under `pack` (precedence in the module docstring).
    `history` is the author's, when the pack's rules read it and it could be read.

    Pure: an input seen before is answered from memory."""
    key = (id(pack), verdict, repr(confidence), tuple(categories), history)
    known = _ROUTES.get(key)
    if known is not None and known[0] is pack:
        return known[1]
    routed = _route(pack, verdict, confidence, categories, history)
    if len(_ROUTES) >= _ROUTES_KEPT:
        _ROUTES.clear()
    _ROUTES[key] = (pack, routed)
    return routed


def _route(
    pack: PolicyPack,
    verdict: Verdict,
    confidence: float | None,
    categories: Sequence[str],
    history: AuthorHistory | None = None,
) -> Routed:
    # Unknown strings are ignored rather than echoed: explanations end up in decisions.
    named = [c for c in pack.category_names if c in categories]
    usable = _usable(confidence)
    threshold = pack.review_below.for_verdict(verdict)
    said = _said(verdict, usable, named)

    rule = first_match(pack.rules, verdict, usable, named, history)
    if rule is not None:
        return _routed(rule.action, rule.ref, f"{said}; {pack.ref} {describe(rule, history)}")

    blocked = [c for c in named if c in pack.always_block]
    if blocked:
        return _routed(
            Action.BLOCK,
            f"always_block:{blocked[0]}",
            f"{said}; {pack.ref} always blocks {_listed(blocked)}",
        )
    reviewed = [c for c in named if c in pack.always_review]
    if reviewed:
        return _routed(
            Action.REVIEW,
            f"always_review:{reviewed[0]}",
            f"{said}; {pack.ref} always sends {_listed(reviewed)} to human review",
        )
    if usable is None and (verdict is not Verdict.SAFE or threshold is not None):
        return _routed(
            Action.REVIEW,
            f"no_confidence:{verdict.value}",
            f"{said}; {pack.ref} does not act on a {verdict.value} verdict without one",
        )
    if usable is not None and threshold is not None and usable < threshold:
        shown = _threshold(threshold)
        return _routed(
            Action.REVIEW,
            f"low_confidence:{verdict.value}<{shown}",
            f"{said}, below the threshold {shown} that {pack.ref} sets for {verdict.value}",
        )
    if verdict is Verdict.CONTROVERSIAL:
        mode = pack.controversial
        return _routed(
            _CONTROVERSIAL_ACTION[mode],
            f"controversial:{mode.value}",
            f"{said}; {pack.ref} {_CONTROVERSIAL_POLICY[mode]} (controversial: {mode.value})",
        )
    return _routed(_VERDICT_ACTION[verdict], "verdict", said)


def route_scorer_unavailable(pack: PolicyPack) -> Routed:
    """The action for a post the scorer could not judge within its outage budget.

    Only the caller knows the budget ran out; this says what the pack wants done about it.
    """
    if pack.scorer_unavailable is ScorerUnavailableMode.FAIL_OPEN:
        return _routed(
            Action.ALLOW,
            "scorer_unavailable:fail_open",
            f"not moderated: the scorer was unavailable past its budget and {pack.ref} fails open",
        )
    return _routed(
        Action.REVIEW,
        "scorer_unavailable:fail_closed",
        f"the scorer was unavailable past its budget and {pack.ref} fails closed",
    )


def review_sla(pack: PolicyPack, categories: Sequence[str]) -> ReviewSla:
    """The tightest deadline that applies: a category override when the post has one."""
    overrides = [s for c, s in pack.review_sla_by_category.items() if c in categories]
    deadline = min(overrides, default=pack.review_sla_s)
    return ReviewSla(
        deadline,
        math.floor(deadline * pack.review_warning_fraction),
        min(pack.assignment_sla_s, deadline),
    )


def _usable(confidence: float | None) -> float | None:
    # NaN compares false with every threshold and would slip past rule 4.
    if confidence is None or not math.isfinite(confidence) or not 0.0 <= confidence <= 1.0:
        return None
    return confidence


def _said(verdict: Verdict, confidence: float | None, categories: Sequence[str]) -> str:
    cats = f" [{', '.join(categories)}]" if categories else ""
    conf = (
        "without a confidence" if confidence is None else f"at confidence {_confidence(confidence)}"
    )
    return f"model verdict {verdict.value}{cats} {conf}"


def _confidence(value: float) -> str:
    """Two decimals rounded down: the shown value is never above the real one, so a
    confidence shown next to a threshold it is below never reads as equal to it."""
    return str(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_FLOOR))


def _threshold(value: float) -> str:
    """At least two decimals, exact (never rounded, never in exponent notation)."""
    whole, _, decimals = f"{Decimal(repr(float(value))):f}".partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _listed(categories: Sequence[str]) -> str:
    return ", ".join(categories)


def _routed(action: Action, rule: str, detail: str) -> Routed:
    text = f"{_DONE[action]}: {detail}."
    # Decision.reason holds 500; cut visibly here rather than silently downstream.
    if len(text) > EXPLANATION_MAX:
        text = text[: EXPLANATION_MAX - 1] + "…"
    return Routed(action, rule, text)
