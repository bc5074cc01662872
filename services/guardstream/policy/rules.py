"""A pack's own rules: (verdict, category, confidence band, author history) → action.

`rules:` in a pack is an ordered list; the first rule whose every condition holds decides,
and the decision records `rule:<id>`. A condition left out matches anything. When no rule
matches, the pack's built-in rules decide (`policy.routing`: always_block, always_review,
thresholds, controversial mode). Reference and examples: docs/concepts/policy-rules.md.

Two safety rules hold whatever a pack says, and `rule_problems` refuses a pack that would
break them at load: a rule that publishes (`allow`, `limit`, `warn`) never matches `unsafe`,
and never matches a non-safe verdict without a usable confidence (unparseable model output
arrives as `controversial` without one and must reach a person or be blocked). Author
conditions match only when the author's history could be read: with Redis down, a rule that
needs the history is skipped, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Action, AuthorHistory, Verdict

# Actions that publish the post: never for unsafe, never without a usable confidence.
PUBLISHING: Final = frozenset((Action.ALLOW, Action.LIMIT, Action.WARN))

AuthorFigure = Literal[
    "unsafe_1d",
    "unsafe_7d",
    "unsafe_30d",
    "controversial_1d",
    "controversial_7d",
    "controversial_30d",
    "confirmed_unsafe_1d",
    "confirmed_unsafe_7d",
    "confirmed_unsafe_30d",
]
AUTHOR_FIGURES: Final[tuple[str, ...]] = get_args(AuthorFigure)
assert set(AUTHOR_FIGURES) == set(AuthorHistory.model_fields)

RuleId = Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
Threshold = Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Count = Annotated[StrictInt, Field(ge=0, le=1_000_000)]


def _one_or_many(value: object) -> object:
    """`verdict: unsafe` reads as `verdict: [unsafe]`."""
    return [value] if isinstance(value, str) else value


class ConfidenceBand(BaseModel):
    """`at_least <= confidence < below`; either end may be left out, not both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_least: Threshold | None = None
    below: Threshold | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ConfidenceBand:
        if self.at_least is None and self.below is None:
            raise ValueError("give at_least, below or both (an empty band is no condition)")
        return self

    def holds(self, value: float) -> bool:
        return (self.at_least is None or value >= self.at_least) and (
            self.below is None or value < self.below
        )

    def empty(self) -> bool:
        return self.at_least is not None and self.below is not None and self.at_least >= self.below

    def within(self, other: ConfidenceBand) -> bool:
        """Every value in this band is in `other`."""
        low = self.at_least if self.at_least is not None else 0.0
        high = self.below if self.below is not None else math.inf
        return (other.at_least is None or low >= other.at_least) and (
            other.below is None or high <= other.below
        )


class CountBand(BaseModel):
    """`at_least <= count < below` for one author figure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_least: Count | None = None
    below: Count | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> CountBand:
        if self.at_least is None and self.below is None:
            raise ValueError("give at_least, below or both (an empty band is no condition)")
        return self

    def holds(self, value: int) -> bool:
        return (self.at_least is None or value >= self.at_least) and (
            self.below is None or value < self.below
        )

    def empty(self) -> bool:
        return (self.below is not None and self.below <= 0) or (
            self.at_least is not None and self.below is not None and self.at_least >= self.below
        )

    def within(self, other: CountBand) -> bool:
        low = self.at_least or 0
        high = self.below if self.below is not None else math.inf
        return (other.at_least is None or low >= other.at_least) and (
            other.below is None or high <= other.below
        )


class Rule(BaseModel):
    """One rule. Every condition given must hold; `categories` holds when the verdict names
    any of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: RuleId
    description: Annotated[StrictStr, Field(max_length=300)] | None = None
    verdict: (
        Annotated[
            tuple[Verdict, ...], BeforeValidator(_one_or_many), Field(min_length=1, max_length=3)
        ]
        | None
    ) = None
    categories: Annotated[tuple[StrictStr, ...], Field(min_length=1, max_length=64)] | None = None
    confidence: ConfidenceBand | None = None
    author: Annotated[dict[AuthorFigure, CountBand], Field(min_length=1)] | None = None
    action: Action

    @property
    def ref(self) -> str:
        """What a decision records as its `rule`."""
        return f"rule:{self.id}"

    def verdicts(self) -> frozenset[Verdict]:
        return frozenset(self.verdict) if self.verdict is not None else frozenset(Verdict)

    def matches(
        self,
        verdict: Verdict,
        confidence: float | None,
        categories: Sequence[str],
        history: AuthorHistory | None,
    ) -> bool:
        """`confidence` is usable (finite, 0..1) or None."""
        if verdict not in self.verdicts():
            return False
        if self.action in PUBLISHING and verdict is not Verdict.SAFE and confidence is None:
            return False
        if self.categories is not None and not any(c in self.categories for c in categories):
            return False
        if self.confidence is not None and (
            confidence is None or not self.confidence.holds(confidence)
        ):
            return False
        if self.author is not None:
            if history is None:
                return False
            figures = history.model_dump()
            return all(band.holds(figures[name]) for name, band in self.author.items())
        return True

    def covers(self, later: Rule) -> bool:
        """Whether this rule matches every input `later` matches (so `later` never fires)."""
        if not later.verdicts() <= self.verdicts():
            return False
        if self.categories is not None and (
            later.categories is None or not set(later.categories) <= set(self.categories)
        ):
            return False
        if self.confidence is not None and (
            later.confidence is None or not later.confidence.within(self.confidence)
        ):
            return False
        # A publishing rule skips non-safe verdicts without a confidence; `later` may not.
        if (
            self.action in PUBLISHING
            and later.action not in PUBLISHING
            and later.confidence is None
            and later.verdicts() - {Verdict.SAFE}
        ):
            return False
        if self.author is not None:
            theirs = later.author or {}
            for name, band in self.author.items():
                if name not in theirs or not theirs[name].within(band):
                    return False
        return True


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """Why a pack's rules are refused; `path` is the field path (for the file's line)."""

    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.path))}: {self.message}"


class RuleProblems(PermanentError, ValueError):
    """A pack's rules are wrong (raised by the pack model); the loader turns each problem
    into a line of its report. Not retriable: fix the file."""

    def __init__(self, problems: Sequence[RuleProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(map(str, self.problems)))


def rule_problems(rules: Sequence[Rule], categories: Sequence[str]) -> list[RuleProblem]:
    """Everything that makes `rules` wrong: an unknown category, a rule that can never fire
    (an empty band, shadowed by an earlier rule), a repeated id, a publishing rule for unsafe."""
    problems: list[RuleProblem] = []
    known = set(categories)
    seen: dict[str, int] = {}
    for n, rule in enumerate(rules):
        if rule.id in seen:
            problems.append(
                RuleProblem(("rules", n, "id"), f"{rule.id!r} is rule {seen[rule.id]}'s id too")
            )
        seen.setdefault(rule.id, n)
        for i, name in enumerate(rule.categories or ()):
            if name not in known:
                close = [c for c in categories if c.casefold() == name.strip().casefold()]
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(categories)}"
                problems.append(
                    RuleProblem(
                        ("rules", n, "categories", i), f"unknown category {name!r} ({hint})"
                    )
                )
        if rule.action in PUBLISHING and Verdict.UNSAFE in rule.verdicts():
            problems.append(
                RuleProblem(
                    ("rules", n, "action"),
                    f"{rule.action.value} publishes the post, and this rule matches unsafe "
                    "verdicts: name the verdicts it is for (verdict: [safe, controversial])",
                )
            )
        if rule.confidence is not None and rule.confidence.empty():
            problems.append(
                RuleProblem(
                    ("rules", n, "confidence"), "can never fire: no confidence is in this band"
                )
            )
        for name, band in (rule.author or {}).items():
            if band.empty():
                problems.append(
                    RuleProblem(
                        ("rules", n, "author", name), "can never fire: no count is in this band"
                    )
                )
        for m, earlier in enumerate(rules[:n]):
            if earlier.covers(rule):
                problems.append(
                    RuleProblem(
                        ("rules", n),
                        f"can never fire: rule {m} ({earlier.id!r}) matches everything it "
                        "matches and comes first",
                    )
                )
                break
    return problems


def first_match(
    rules: Sequence[Rule],
    verdict: Verdict,
    confidence: float | None,
    categories: Sequence[str],
    history: AuthorHistory | None,
) -> Rule | None:
    """The first rule that matches, or None (the pack's built-in rules decide)."""
    for rule in rules:
        if rule.matches(verdict, confidence, categories, history):
            return rule
    return None


def uses_history(rules: Sequence[Rule]) -> bool:
    """Whether any rule reads the author's history (only then is it looked up)."""
    return any(rule.author is not None for rule in rules)


def describe(rule: Rule, history: AuthorHistory | None) -> str:
    """Why the rule matched, from its own conditions and the figures it read."""
    parts: list[str] = []
    if rule.author is not None and history is not None:
        figures: Mapping[str, Any] = history.model_dump()
        parts.append(
            "author history " + ", ".join(f"{name}={figures[name]}" for name in rule.author)
        )
    said = f" ({'; '.join(parts)})" if parts else ""
    about = f": {rule.description}" if rule.description else ""
    return f"rule {rule.id!r}{about}{said}"
