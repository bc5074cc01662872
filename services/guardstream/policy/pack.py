"""A policy pack: how one tenant (optionally in one region) turns model verdicts into actions.

Packs are configuration owned by trust & safety, versioned so every decision can say which
rules produced it (`PolicyPack.ref`, `"id@version"`). The model is frozen and forbids unknown
fields: a misspelt key or category fails at start-up instead of silently dropping a rule.
A pack's `categories` (Qwen3Guard's nine unless it extends or replaces them) are the only
names its category fields (`always_block`, `always_review`, `review_sla_by_category`) accept.
`schemas/policy-pack.v1.json` describes the same file format; a unit test keeps both in step.
Packs do not inherit from each other: a field a pack leaves out takes the default below, not
the default pack's value, so each file reads on its own.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
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

from guardstream.contracts.categories import (
    DEFAULT_CATEGORIES,
    CategoryDef,
    CategoryName,
    unknown_category,
)
from guardstream.contracts.events import LINE, Arm, Verdict
from guardstream.contracts.redaction import PiiKind, redact
from guardstream.contracts.text import neutralise, normalise
from guardstream.policy.experiment import Experiment
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


class ReasonRequired(enum.StrEnum):
    """When a reviewer's decision must carry a reason (at most `REVIEW_REASON_MAX` characters)."""

    ALWAYS = "always"  # the seeds: 必填, every decision says why (and the reason is trained on)
    WHEN_CORRECTING = "when_correcting"  # a confirmation may go without one


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


# A field naming categories holds names; which names a pack knows is its `categories` list,
# checked by `PolicyPack._known_categories` (fields validate in declaration order).
Category = CategoryName


def extended_categories(value: Any) -> Any:
    """`categories: {extend: [...]}` is Qwen3Guard's nine followed by the listed ones; a list
    replaces the nine; leaving the field out keeps them."""
    if isinstance(value, dict):
        if set(value) != {"extend"} or not isinstance(value["extend"], list | tuple):
            raise ValueError("write a list of categories, or {extend: [categories...]}")
        return (*DEFAULT_CATEGORIES, *value["extend"])
    return value


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
    # A/B (policy.experiment): a pack in force may send `percent` of its posts to a candidate
    # pack; a candidate claims no posts of its own (its tenants and regions must be those of
    # the pack naming it) and decides only the posts an experiment sends it.
    experiment: Experiment | None = None
    candidate: StrictBool = False

    controversial: ControversialMode = ControversialMode.REVIEW
    review_below: ReviewBelow = ReviewBelow()
    # Declared before every field naming categories, which are checked against it.
    categories: Annotated[
        tuple[CategoryDef, ...],
        Field(min_length=1, max_length=32),
        BeforeValidator(extended_categories),
    ] = DEFAULT_CATEGORIES
    always_block: tuple[Category, ...] = ()
    always_review: tuple[Category, ...] = ()
    # The pack's own rules (policy/rules.py), before the built-in ones above: first match wins.
    rules: tuple[Rule, ...] = ()

    domain_tags: dict[TagKey, TagValue] = Field(default_factory=dict)
    region_hint: TagValue | None = None
    # The post's own `region` → the name rendered as [地区:…] (matched without regard to
    # case); a region not listed falls back to `region_hint`.
    region_names: dict[Region, TagValue] = Field(default_factory=dict)

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
    # Whether a reviewer must give a reason for every decision or only for a correction (the
    # review service refuses a decision without one; a blind QA label always needs one).
    reason_required: ReasonRequired = ReasonRequired.ALWAYS
    redact: Redaction = Redaction()

    @property
    def ref(self) -> str:
        """What a decision records as its `policy`: which pack, which version of it."""
        return f"{self.id}@{self.version}"

    @property
    def arm(self) -> Arm | None:
        """What this pack's decisions record as their `arm` (None: no experiment)."""
        if self.candidate:
            return Arm.CANDIDATE
        return Arm.CONTROL if self.experiment is not None else None

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, experiment: Experiment | None, info: ValidationInfo) -> Experiment | None:
        if experiment is not None and experiment.candidate == info.data.get("id"):
            raise ValueError("experiment.candidate names this pack itself")
        return experiment

    @field_validator("candidate")
    @classmethod
    def _candidate(cls, candidate: bool, info: ValidationInfo) -> bool:
        if candidate and info.data.get("experiment") is not None:
            raise ValueError("a candidate pack cannot run an experiment of its own")
        return candidate

    @property
    def uses_author_history(self) -> bool:
        """Whether deciding under this pack reads the author's history."""
        return uses_history(self.rules)

    @model_validator(mode="after")
    def _rules(self) -> PolicyPack:
        problems = rule_problems(self.rules, self.category_names)
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

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    @field_validator("categories")
    @classmethod
    def _category_list(cls, categories: tuple[CategoryDef, ...]) -> tuple[CategoryDef, ...]:
        seen: dict[str, str] = {}  # casefolded spelling → the category it names
        for category in categories:
            for spelling in category.spellings:
                # Names render into the prompt as written: like tag keys, already normal and
                # free of anything the model could read as prompt structure.
                if normalise(spelling) != spelling or neutralise(spelling) != spelling:
                    raise ValueError(
                        f"category {spelling!r} has invisible, full-width or template "
                        f"characters: write {neutralise(normalise(spelling))!r}"
                    )
            # A translation spelt like its own name is harmless; like another's, ambiguous.
            for folded in dict.fromkeys(s.casefold() for s in category.spellings):
                if folded in seen:
                    raise ValueError(
                        f"{folded!r} is listed twice (in {seen[folded]!r} and {category.name!r})"
                    )
                seen[folded] = category.name
        return categories

    @field_validator("always_block", "always_review", "review_sla_by_category")
    @classmethod
    def _known_categories(cls, named: Any, info: ValidationInfo) -> Any:
        if "categories" not in info.data:
            return named  # the list itself was refused; that error says why
        known = [c.name for c in info.data["categories"]]
        for name in named:
            if name not in known:
                raise ValueError(unknown_category(name, known))
        return named

    @field_validator("region_names")
    @classmethod
    def _region_names(cls, names: dict[str, str]) -> dict[str, str]:
        if len({r.casefold() for r in names}) != len(names):
            raise ValueError("a region is listed twice")
        return names

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
