"""What a candidate set of packs would have done to posts humans already judged (pure).

Each reviewed post (a `Case`: the model's verdict, categories and confidence as archived,
and the reviewer's verdict) is routed twice: under the packs in force (`baseline`: the pack the
decision named when that version is still loaded, else the pack for the post now) and under the
candidate, with the same routing function the processes use. Nothing is scored again: the
model's verdicts are replayed, so the difference is the packs' alone.

Against the human label, an action is judged by what it claims: `allow` claims the post is
safe, `block` that it is unsafe; `review` claims nothing (a person decides). Figures:

- `changed`: cases whose action differs between baseline and candidate;
- per action: how many cases each side sends there, and its precision (of the posts it
  allowed, how many a human called safe; of those it blocked, how many unsafe);
- `unsafe_recall`: of the posts a human called unsafe, the share blocked;
  `false_positive_rate`: of the posts a human called safe, the share blocked;
  `review_rate`: the share sent to review;
- the same per model category (a case counts under each category the model named, or `None`);
- `confusion`: human verdict × action, per side (what the HTML report plots).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from guardstream.contracts.events import Action, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.policy.pack import PolicyPack
from guardstream.policy.registry import PolicyRegistry
from guardstream.policy.routing import route

NO_CATEGORY = "None"
# What an action claims about the post, when it claims anything.
CLAIMS: Mapping[Action, Verdict] = {Action.ALLOW: Verdict.SAFE, Action.BLOCK: Verdict.UNSAFE}


@dataclass(frozen=True, slots=True)
class Case:
    """One post a human judged, as the model and the packs saw it."""

    tenant: str
    region: str | None
    policy: str  # the pack ref the decision named (`id@version`)
    verdict: Verdict
    categories: tuple[str, ...]
    confidence: float | None
    human: Verdict

    @classmethod
    def from_sample(cls, sample: FeedbackSample) -> Case:
        # The archive keeps no region: a regional pack's tenant is matched as "any region"
        # unless the decision named that regional pack (still loaded) itself.
        return cls(
            sample.tenant,
            None,
            sample.policy,
            sample.pred_verdict,
            tuple(sample.pred_categories),
            sample.pred_confidence,
            sample.human_verdict,
        )


@dataclass
class Side:
    """One registry's figures over a set of cases."""

    actions: Counter[Action] = field(default_factory=Counter)
    correct: Counter[Action] = field(default_factory=Counter)  # the human agreed with the claim
    confusion: Counter[tuple[Verdict, Action]] = field(default_factory=Counter)

    def add(self, action: Action, human: Verdict) -> None:
        self.actions[action] += 1
        self.confusion[(human, action)] += 1
        if CLAIMS.get(action) is human:
            self.correct[action] += 1

    @property
    def total(self) -> int:
        return sum(self.actions.values())

    def precision(self, action: Action) -> float | None:
        return _ratio(self.correct[action], self.actions[action]) if action in CLAIMS else None

    def human(self, verdict: Verdict) -> int:
        return sum(n for (h, _), n in self.confusion.items() if h is verdict)

    def figures(self) -> dict[str, Any]:
        return {
            "cases": self.total,
            "actions": {a.value: self.actions[a] for a in _actions(self.actions)},
            "precision": {a.value: self.precision(a) for a in CLAIMS},
            "unsafe_recall": _ratio(
                self.confusion[(Verdict.UNSAFE, Action.BLOCK)], self.human(Verdict.UNSAFE)
            ),
            "false_positive_rate": _ratio(
                self.confusion[(Verdict.SAFE, Action.BLOCK)], self.human(Verdict.SAFE)
            ),
            "review_rate": _ratio(self.actions[Action.REVIEW], self.total),
            "confusion": {
                h.value: {a.value: self.confusion[(h, a)] for a in _actions(self.actions)}
                for h in Verdict
            },
        }


@dataclass
class Group:
    """Baseline and candidate over one slice of the cases (all, or one category)."""

    baseline: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)
    changed: int = 0
    moves: Counter[tuple[Action, Action]] = field(default_factory=Counter)  # (before, after)

    def add(self, before: Action, after: Action, human: Verdict) -> None:
        self.baseline.add(before, human)
        self.candidate.add(after, human)
        if before is not after:
            self.changed += 1
            self.moves[(before, after)] += 1

    def figures(self) -> dict[str, Any]:
        return {
            "cases": self.baseline.total,
            "changed": self.changed,
            "moves": [
                {"from": b.value, "to": a.value, "cases": n}
                for (b, a), n in sorted(self.moves.items(), key=lambda m: (-m[1], m[0]))
            ],
            "baseline": self.baseline.figures(),
            "candidate": self.candidate.figures(),
        }


@dataclass
class Report:
    overall: Group = field(default_factory=Group)
    by_category: dict[str, Group] = field(default_factory=dict)
    baseline_packs: tuple[str, ...] = ()
    candidate_packs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_packs": list(self.baseline_packs),
            "candidate_packs": list(self.candidate_packs),
            **self.overall.figures(),
            "by_category": {name: g.figures() for name, g in sorted(self.by_category.items())},
        }


def backtest(cases: Iterable[Case], baseline: PolicyRegistry, candidate: PolicyRegistry) -> Report:
    """Route every case under both registries and count (see the module docstring)."""
    report = Report(
        baseline_packs=tuple(sorted(p.ref for p in baseline.packs)),
        candidate_packs=tuple(sorted(p.ref for p in candidate.packs)),
    )
    for case in cases:
        before = _action(_pack_then(baseline, case), case)
        after = _action(candidate.for_post(case.tenant, case.region), case)
        report.overall.add(before, after, case.human)
        for category in case.categories or (NO_CATEGORY,):
            report.by_category.setdefault(category, Group()).add(before, after, case.human)
    return report


def _pack_then(registry: PolicyRegistry, case: Case) -> PolicyPack:
    """The pack that decided the case, when that version is still loaded."""
    return registry.by_ref(case.policy) or registry.for_post(case.tenant, case.region)


def _action(pack: PolicyPack, case: Case) -> Action:
    return route(pack, case.verdict, case.confidence, case.categories).action


def _actions(seen: Counter[Action]) -> Sequence[Action]:
    """Every action, in the contract's order: the ones named there and any a pack uses."""
    return [a for a in Action if a in CLAIMS or a is Action.REVIEW or seen[a]]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class PackGate:
    """When a candidate may replace the packs in force, judged on its backtest. The same
    margins as the adapters' promotion gate (`feedback.shadow.ShadowConfig`): enough labelled
    evidence, and no more false positives and no fewer caught unsafe posts than a tolerance."""

    min_cases: int = 30
    fpr_tolerance: float = 0.02  # the false-positive rate may rise at most this much
    recall_tolerance: float = 0.02  # the unsafe recall may fall at most this much


def gate(report: Report, config: PackGate) -> tuple[bool, str]:
    """(passes, why) for `report` under `config`; a missing rate (no such label) passes."""
    figures = report.to_dict()
    if figures["cases"] < config.min_cases:
        return False, f"{figures['cases']} reviewed cases, fewer than the {config.min_cases} needed"
    before, after = figures["baseline"], figures["candidate"]
    fpr_b, fpr_a = before["false_positive_rate"], after["false_positive_rate"]
    if fpr_b is not None and fpr_a is not None and fpr_a > fpr_b + config.fpr_tolerance:
        return False, (
            f"false-positive rate {fpr_a:.3f} > {fpr_b:.3f} + {config.fpr_tolerance} "
            "(it would block more posts reviewers call safe)"
        )
    rec_b, rec_a = before["unsafe_recall"], after["unsafe_recall"]
    if rec_b is not None and rec_a is not None and rec_a < rec_b - config.recall_tolerance:
        return False, (
            f"unsafe recall {rec_a:.3f} < {rec_b:.3f} - {config.recall_tolerance} "
            "(it would block fewer posts reviewers call unsafe)"
        )
    return True, (
        f"{figures['cases']} cases, {figures['changed']} change; false-positive rate "
        f"{_shown(fpr_b)} → {_shown(fpr_a)}, unsafe recall {_shown(rec_b)} → {_shown(rec_a)}"
    )


def _shown(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
