"""A policy pack: how one tenant (optionally in one region) turns model verdicts into actions.

Packs are configuration owned by trust & safety, versioned so every decision can say which
rules produced it (`PolicyPack.ref`, `"id@version"`). The model is frozen and forbids unknown
fields: a misspelt key or category fails at start-up instead of silently dropping a rule.
`schemas/policy-pack.v1.json` describes the same file format; a unit test keeps both in step.
Packs do not inherit from each other: a field a pack leaves out takes the default below, not
the default pack's value, so each file reads on its own.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guardstream.contracts.events import LINE, Verdict
from guardstream.contracts.labels import CATEGORIES
from guardstream.contracts.redaction import PiiKind, redact
from guardstream.contracts.text import normalise
from guardstream.policy.rules import Rule, RuleProblems, rule_problems, uses_history

DEFAULT_TENANT: Final = "*"
# The tag key the region hint renders under (see `policy.prompt`); a domain tag may not use it.
REGION_TAG: Final = "地区"
DEFAULT_REVIEW_SLA_S: Final = 7200  # the seeds' "有争议 within 2 hours"
DEFAULT_ASSIGNMENT_SLA_S: Final = 900  # an on-call reviewer must pick a contested item up
DEFAULT_CACHE_TTL_S: Final = 604800  # same as GUARDSTREAM_CACHE_TTL_S's default


class ControversialMode(enum.StrEnum):
    """What a confident `controversial` verdict becomes."""

    STRICT = "strict"  # block
    REVIEW = "review"  # human review
    LOOSE = "loose"  # allow


class ScorerUnavailableMode(enum.StrEnum):
    """What a post becomes when the scorer has been down past its budget."""

    FAIL_OPEN = "fail_open"  # allow, saying it was not moderated
    FAIL_CLOSED = "fail_closed"  # human review


# `@` never appears in either part, so `ref` splits back unambiguously; together they fit the
# 128-character `policy` field of a Decision.
PackId = Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
PackVersion = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")]
TenantClaim = Annotated[StrictStr, Field(pattern=r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$")]
Region = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,34}$")]
# Brackets and colons would make the rendered `[key:value]` ambiguous, so keys cannot hold them
# (values are neutralised at render time instead: they may come from reviewers' notes). Both
# keep the contract's character rule (no control characters, no lone surrogates): a prompt
# prefix that broke it would send every post of the pack to the DLQ.
TagKey = Annotated[StrictStr, Field(pattern=r"^[^\[\]:：\s\x00-\x1f\x7f-\x9f]{1,32}$")]
TagValue = Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=LINE)]
Threshold = Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Seconds = Annotated[StrictInt, Field(gt=0)]


def check_category(name: str) -> str:
    """A category must be spelt as Qwen3Guard spells it, or the rule would never fire."""
    if name in CATEGORIES:
        return name
    close = [c for c in CATEGORIES if c.casefold() == name.strip().casefold()]
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(CATEGORIES)}"
    raise ValueError(f"unknown Qwen3Guard category {name!r} ({hint})")


Category = Annotated[StrictStr, AfterValidator(check_category)]


class ReviewBelow(BaseModel):
    """Per verdict, the confidence under which the verdict goes to review instead of acting.

    Strictly below: a confidence equal to the threshold acts. Unset means no threshold.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    safe: Threshold | None = None
    controversial: Threshold | None = None
    unsafe: Threshold | None = None

    def for_verdict(self, verdict: Verdict) -> float | None:
        return {
            Verdict.SAFE: self.safe,
            Verdict.CONTROVERSIAL: self.controversial,
            Verdict.UNSAFE: self.unsafe,
        }[verdict]


class Redaction(BaseModel):
    """Personal data replaced by placeholders (`contracts.redaction`) where review data leaves
    the review database. On by default (data minimisation): a placeholder keeps the kind of
    what was there (`[PHONE]`), which is what a verdict turns on, not the digits themselves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    archive: StrictBool = True  # the feedback sample as archived (and queued in the outbox)
    training: StrictBool = True  # the training and evaluation examples built from the archive
    kinds: tuple[PiiKind, ...] = tuple(PiiKind)

    def for_archive(self, text: str) -> str:
        return redact(text, self.kinds) if self.archive else text


class PolicyPack(BaseModel):
    """One versioned pack. Which posts it applies to: `tenants` × (`regions` or any region)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: PackId
    version: PackVersion
    description: Annotated[StrictStr, Field(max_length=500)] | None = None
    tenants: Annotated[tuple[TenantClaim, ...], Field(min_length=1)]
    regions: Annotated[tuple[Region, ...], Field(min_length=1)] | None = None

    controversial: ControversialMode = ControversialMode.REVIEW
    review_below: ReviewBelow = ReviewBelow()
    always_block: tuple[Category, ...] = ()
    always_review: tuple[Category, ...] = ()
    # The pack's own rules (policy/rules.py), before the built-in ones above: first match wins.
    rules: tuple[Rule, ...] = ()

    domain_tags: dict[TagKey, TagValue] = Field(default_factory=dict)
    region_hint: TagValue | None = None

    scorer_unavailable: ScorerUnavailableMode = ScorerUnavailableMode.FAIL_CLOSED
    # A trivial variant (case, punctuation, emoji, link added) of a decided post reuses its
    # verdict instead of being scored; off for tenants that want every post scored.
    reuse_near_duplicates: StrictBool = True
    # Whether this pack's model verdicts (and near-duplicate index) are pooled with other
    # sharing packs' tenants. Off by default: a cache hit on another tenant's verdict tells
    # this tenant that the other one saw the same text. Human verdicts are never shared.
    share_model_verdicts: StrictBool = False
    cache_ttl_s: Seconds = DEFAULT_CACHE_TTL_S
    review_sla_s: Seconds = DEFAULT_REVIEW_SLA_S
    review_sla_by_category: dict[Category, Seconds] = Field(default_factory=dict)
    review_warning_fraction: Annotated[StrictFloat, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = (
        0.75
    )
    # A contested item must be assigned to a reviewer within this (breach: alert, no downgrade).
    assignment_sla_s: Seconds = DEFAULT_ASSIGNMENT_SLA_S
    redact: Redaction = Redaction()

    @property
    def ref(self) -> str:
        """What a decision records as its `policy`: which pack, which version of it."""
        return f"{self.id}@{self.version}"

    @property
    def uses_author_history(self) -> bool:
        """Whether deciding under this pack reads the author's history."""
        return uses_history(self.rules)

    def category_names(self) -> tuple[str, ...]:
        """The categories rules may name: the pack's own list when it has one, else
        Qwen3Guard's."""
        own = getattr(self, "categories", None)  # a pack-level list, where the pack has one
        if not own:
            return CATEGORIES
        return tuple(str(getattr(c, "name", c)) for c in own)

    @model_validator(mode="after")
    def _rules(self) -> PolicyPack:
        problems = rule_problems(self.rules, self.category_names())
        if problems:
            raise RuleProblems(problems)
        return self

    @property
    def is_default(self) -> bool:
        return self.tenants == (DEFAULT_TENANT,) and self.regions is None

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, tenants: tuple[str, ...]) -> tuple[str, ...]:
        if DEFAULT_TENANT in tenants and len(tenants) > 1:
            raise ValueError('"*" (every tenant) must be the only entry')
        if len(set(tenants)) != len(tenants):
            raise ValueError("a tenant is listed twice")
        return tenants

    @field_validator("regions")
    @classmethod
    def _regions(cls, regions: tuple[str, ...] | None) -> tuple[str, ...] | None:
        # Posts' regions are matched without regard to case, so "CN" and "cn" are one region.
        if regions is not None and len({r.casefold() for r in regions}) != len(regions):
            raise ValueError("a region is listed twice")
        return regions

    @field_validator("always_block", "always_review")
    @classmethod
    def _categories(cls, categories: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if len(set(categories)) != len(categories):
            raise ValueError("a category is listed twice")
        # Fields validate in declaration order, so always_block is known here.
        both = sorted(set(categories) & set(info.data.get("always_block", ())))
        if info.field_name == "always_review" and both:
            raise ValueError(
                f"{', '.join(both)} also in always_block: a category is blocked or reviewed, "
                "not both"
            )
        return categories

    @field_validator("domain_tags")
    @classmethod
    def _domain_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key in tags:
            # Keys render as written, so they must already be in the normal form user text is
            # brought to: no invisible characters, no look-alikes ("［", "﹕") of "[", "]", ":".
            if normalise(key) != key:
                raise ValueError(
                    f"tag key {key!r} has invisible or full-width characters: write "
                    f"{normalise(key)!r}"
                )
        if REGION_TAG in tags:
            raise ValueError(f"{REGION_TAG!r} is the region hint's tag: set region_hint instead")
        return tags
