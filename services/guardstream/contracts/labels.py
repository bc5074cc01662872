"""Qwen3Guard-Gen's vocabulary: its three labels (and the verdict each means) and its own
nine harm categories (the default of every policy pack's list: `contracts.categories`)."""

from __future__ import annotations

from guardstream.contracts.categories import DEFAULT_CATEGORIES
from guardstream.contracts.events import Label, Verdict

LABELS: tuple[Label, ...] = ("Safe", "Unsafe", "Controversial")
LABEL_VERDICT: dict[Label, Verdict] = {
    "Safe": Verdict.SAFE,
    "Unsafe": Verdict.UNSAFE,
    "Controversial": Verdict.CONTROVERSIAL,
}
CATEGORIES: tuple[str, ...] = tuple(c.name for c in DEFAULT_CATEGORIES)
