"""Harm categories as a policy pack defines them: a name, what it covers, and other spellings.

Qwen3Guard's nine (`DEFAULT_CATEGORIES`) are every pack's list unless the pack extends or
replaces it. A pack's list travels with its score requests and feedback samples (only when it
is not the default), so the scorer renders it into the prompt and parses answers against it,
and training renders the prompt the served model will see. What a name may hold is decided
here: it is written into the prompt and read back from a comma-separated `Categories:` line,
so no comma, colon, bracket, line break or control character, and not "None".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

CATEGORY_NAME: Final = r"^[^,:：，\[\]<>\x00-\x1f\x7f-\x9f]{1,64}$"
# An answer naming a category outside the pack's list keeps it under this prefix (bounded,
# neutralised) so it is never lost and never read as one of the pack's own.
OTHER_PREFIX: Final = "other:"
OTHER_MAX: Final = 64 - len(OTHER_PREFIX)

CategoryName = Annotated[StrictStr, Field(pattern=CATEGORY_NAME)]
Language = Annotated[StrictStr, Field(pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{1,8}){0,2}$")]


class CategoryDef(BaseModel):
    """One category: the canonical `name` decisions, reviews and training targets use, the
    `description` the model reads, and `translations` (language → name) the model may answer
    with, read back as `name`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: CategoryName
    description: Annotated[StrictStr, Field(max_length=300, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
    translations: dict[Language, CategoryName] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if name != name.strip() or name.casefold() == "none":
            raise ValueError(f"{name!r}: no leading/trailing spaces, and not 'None'")
        return name

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every way the model may write it: the name, then its translations."""
        return (self.name, *self.translations.values())


# Qwen3Guard-Gen's own nine, in its order (`contracts.labels.CATEGORIES` is their names),
# with what each covers. The prompt lists them by name only, as Qwen3Guard's template does.
DEFAULT_CATEGORIES: Final[tuple[CategoryDef, ...]] = tuple(
    CategoryDef(name=name, description=description)
    for name, description in (
        ("Violent", "Violence, threats or incitement to harm people or animals."),
        (
            "Non-violent Illegal Acts",
            "Illegal acts without violence: fraud, theft, drugs, hacking, weapons trade.",
        ),
        ("Sexual Content or Sexual Acts", "Sexual content or acts, above all involving minors."),
        ("PII", "Personally identifiable information: revealing or collecting it."),
        ("Suicide & Self-Harm", "Encouraging, instructing or glorifying suicide or self-harm."),
        ("Unethical Acts", "Unethical acts: discrimination, harassment, deception, stigma."),
        (
            "Politically Sensitive Topics",
            "Politically sensitive topics: politics, leaders, events, territory.",
        ),
        ("Copyright Violation", "Reproducing or distributing copyrighted work without permission."),
        ("Jailbreak", "Attempts to make the model ignore its rules or reveal its instructions."),
    )
)


def is_default(categories: Iterable[CategoryDef]) -> bool:
    return tuple(categories) == DEFAULT_CATEGORIES


def spelling_lookup(categories: Iterable[CategoryDef]) -> dict[str, str]:
    """casefolded spelling → canonical name (names win over another category's translation)."""
    found: dict[str, str] = {}
    listed = tuple(categories)
    for spelling, name in [(c.name, c.name) for c in listed] + [
        (t, c.name) for c in listed for t in c.translations.values()
    ]:
        found.setdefault(spelling.strip().casefold(), name)
    return found


DEFAULT_LOOKUP: Final[Mapping[str, str]] = spelling_lookup(DEFAULT_CATEGORIES)


def unknown_category(name: str, known: Iterable[str]) -> str:
    """Why `name` is not one of `known`, suggesting the closest spelling."""
    names = list(known)
    close = [c for c in names if c.casefold() == name.strip().casefold()]
    close = close or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}"
    return f"unknown category {name!r}, not in this pack's categories ({hint})"
