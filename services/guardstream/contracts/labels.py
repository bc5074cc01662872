"""Qwen3Guard-Gen's vocabulary: its three labels (and the verdict each means) and its fixed
list of harm categories. Policy packs, the scorer's parser and the training data all read these."""

from __future__ import annotations

from guardstream.contracts.events import Label, Verdict

LABELS: tuple[Label, ...] = ("Safe", "Unsafe", "Controversial")
LABEL_VERDICT: dict[Label, Verdict] = {
    "Safe": Verdict.SAFE,
    "Unsafe": Verdict.UNSAFE,
    "Controversial": Verdict.CONTROVERSIAL,
}
CATEGORIES: tuple[str, ...] = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
