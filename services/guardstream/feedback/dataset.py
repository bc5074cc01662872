"""Training examples in exactly Qwen3Guard-Gen's format, so downstream parsers never change.

Input: the conversation the scorer would send (`scorer.prompt.neutralise` applied, the pack's
prefix already in `text`, the pack's own category block as the scorer sends it when the sample
carries the pack's categories). Target: `Safety: …` / `Categories: …` [/ `Refusal: …`], the
same lines `scorer.output.parse_answer` reads; a unit test round-trips every target through it.
Target categories are the pack's (a correction to `Financial Fraud` trains exactly that),
in the pack's order; names the pack does not list are left out of the target.
With `reasons` (opt-in: `GUARDSTREAM_FEEDBACK_TRAIN_REASONS`), a sample whose reviewer gave
a reason adds one more line after them, `Reason: <the reviewer's reason>` (on one line,
neutralised): an adapter trained on such targets writes its own rationale after the label,
which the scorer asks for and the parser reads (the model card says `trained_with_reasons`).
A sample without a reason teaches the answer to end after the Qwen3Guard lines, so an
unexplained confirmation stays one.
"""

from __future__ import annotations

from dataclasses import dataclass

from guardstream.contracts.categories import DEFAULT_CATEGORIES
from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Kind, Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.text import neutralise
from guardstream.model.guard import CATEGORIES_ROLE
from guardstream.policy.prompt import category_block

REASON_PREFIX = "Reason:"
_LABEL = {Verdict.SAFE: "Safe", Verdict.UNSAFE: "Unsafe", Verdict.CONTROVERSIAL: "Controversial"}


class NotTrainable(PermanentError, ValueError):
    """A sample that cannot become a faithful target (say why; it is reported, not dropped)."""


@dataclass(frozen=True, slots=True)
class Example:
    messages: tuple[tuple[str, str], ...]
    target: str
    weight: float
    content_key: str
    reason: str | None = None  # the reviewer's reason when the target carries it

    @property
    def with_reason(self) -> bool:
        return self.reason is not None

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def refusal_label(sample: FeedbackSample) -> bool | None:
    """The reviewer's refusal label when they gave one, else the model's (a reviewer who only
    judged safety confirmed the model's refusal by leaving it)."""
    return sample.human_refusal if sample.human_refusal is not None else sample.pred_refusal


def reason_line(reason: str | None) -> str | None:
    """The reviewer's reason as the target's last line's value: neutralised like the input
    (a reason is reviewer-typed text), on one line, or None when nothing is left."""
    if reason is None:
        return None
    text = " ".join(neutralise(reason).split())
    return text or None


def target_text(sample: FeedbackSample, *, reasons: bool = False) -> str:
    known = [c.name for c in (sample.categories or DEFAULT_CATEGORIES)]
    categories = [c for c in known if c in sample.human_categories]
    if sample.human_verdict is Verdict.SAFE:
        categories = []
    elif not categories:
        # A non-safe human label without categories keeps the model's, when it named any.
        categories = [c for c in known if c in sample.pred_categories]
    lines = [
        f"Safety: {_LABEL[sample.human_verdict]}",
        f"Categories: {', '.join(categories) if categories else 'None'}",
    ]
    if sample.kind is Kind.RESPONSE:
        refused = refusal_label(sample)
        if refused is None:
            raise NotTrainable("response sample without a refusal label")
        lines.append(f"Refusal: {'Yes' if refused else 'No'}")
    why = reason_line(sample.human_reason) if reasons else None
    if why is not None:
        lines.append(f"{REASON_PREFIX} {why}")
    return "\n".join(lines)


def example(sample: FeedbackSample, weight: float = 1.0, *, reasons: bool = False) -> Example:
    messages: tuple[tuple[str, str], ...]
    if sample.kind is Kind.RESPONSE:
        if not sample.prompt:
            raise NotTrainable("response sample without its prompt")
        messages = (("user", neutralise(sample.prompt)), ("assistant", neutralise(sample.text)))
    else:
        messages = (("user", neutralise(sample.text)),)
    if sample.categories:
        # The block exactly as `scorer.prompt.messages_for` sends it for the same pack.
        response = sample.kind is Kind.RESPONSE
        block = neutralise(category_block(sample.categories, response=response))
        messages = ((CATEGORIES_ROLE, block), *messages)
    why = reason_line(sample.human_reason) if reasons else None
    return Example(messages, target_text(sample, reasons=reasons), weight, sample.content_key, why)
