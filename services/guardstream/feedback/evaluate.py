"""Held-out evaluation of a base model or base + adapter, with transformers (the training stack).

Each example is scored the way the scorer's fast path reads a verdict: the rendered prompt plus
the assistant's `Safety:` prefix, one forward pass, and the label distribution over the first
tokens of " Safe" / " Unsafe" / " Controversial". Metrics compare against the human label:
accuracy, block rate and false-positive rate (unsafe predicted where the human said safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from guardstream.contracts.events import Verdict
from guardstream.feedback.dataset import Example
from guardstream.feedback.train import load_base
from guardstream.model.guard import ForcedPrefixes, chat_args

LABEL_VERDICT = {
    "Safe": Verdict.SAFE,
    "Unsafe": Verdict.UNSAFE,
    "Controversial": Verdict.CONTROVERSIAL,
}
_TARGET_VERDICT = {f"Safety: {label}": verdict for label, verdict in LABEL_VERDICT.items()}


@dataclass(frozen=True, slots=True)
class Metrics:
    n: int
    accuracy: float
    block_rate: float
    false_positive_rate: float  # unsafe where the human said safe, over human-safe examples

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def human_verdict(example: Example) -> Verdict:
    return _TARGET_VERDICT[example.target.split("\n", 1)[0]]


class LabelScorer:
    """A model (optionally with a LoRA adapter) that reads the label distribution."""

    def __init__(self, base_model: str | Path, adapter_dir: Path | None = None) -> None:
        # lazy: torch and peft only in the training job
        import torch

        model, self._tok = load_base(base_model)
        if adapter_dir is not None:
            # lazy: torch and peft only in the training job
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
        self._model = model.eval()
        self._device = next(model.parameters()).device
        # The label tokens the scorer reads (`Safety:` then the first token of " <Label>").
        self._label_ids = ForcedPrefixes.of(self._tok).label_token
        self._torch = torch

    def distribution(self, example: Example) -> dict[Verdict, float]:
        torch = self._torch
        turns, template = chat_args(example.chat())
        prompt = self._tok.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True, **template
        )
        ids = self._tok.encode(prompt + "Safety:", add_special_tokens=False)
        with torch.no_grad():
            logits = self._model(input_ids=torch.tensor([ids], device=self._device)).logits[0, -1]
        picked = torch.stack([logits[i] for i in self._label_ids.values()]).float()
        probs = torch.softmax(picked, dim=0).tolist()
        return {LABEL_VERDICT[label]: p for label, p in zip(self._label_ids, probs, strict=True)}

    def predict(self, example: Example) -> tuple[Verdict, float]:
        dist = self.distribution(example)
        verdict = max(dist, key=lambda v: dist[v])
        return verdict, dist[verdict]


def evaluate(scorer: LabelScorer, examples: Sequence[Example]) -> Metrics:
    if not examples:
        return Metrics(0, 0.0, 0.0, 0.0)
    right = blocked = human_safe = false_pos = 0
    for ex in examples:
        predicted, _ = scorer.predict(ex)
        truth = human_verdict(ex)
        right += predicted is truth
        blocked += predicted is Verdict.UNSAFE
        if truth is Verdict.SAFE:
            human_safe += 1
            false_pos += predicted is Verdict.UNSAFE
    n = len(examples)
    return Metrics(n, right / n, blocked / n, false_pos / human_safe if human_safe else 0.0)
