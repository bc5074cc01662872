"""LoRA fine-tuning on curated reviews (peft + transformers), CPU for the test checkpoint, GPU
for real Qwen3Guard weights.

Prompt and target are tokenised apart, exactly as vLLM sees the prompt and then generates, and
only target tokens (plus the closing `<|im_end|>`) carry loss; each example's loss is scaled by
its curation weight. A target with a reviewer's `Reason:` line is taught in two parts, each
the mean over its own tokens: the Qwen3Guard lines exactly as without a reason, plus the reason
line (and the end of turn) — a reason several times longer than the label would otherwise
dilute what decides the verdict. Seeds are fixed, so a run is repeatable on the same machine
and library versions. The output directory holds the adapter (`adapter_config.json`, weights) and
`model_card.json`: data window, counts, hyper-parameters, final loss, and
`trained_with_reasons` (whether any target carried a reason line: the scorer then lets the
model write its rationale).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guardstream.feedback.dataset import Example
from guardstream.model.guard import chat_args

IM_END = "<|im_end|>"


@dataclass(frozen=True, slots=True)
class LoraParams:
    """The seeds' defaults: q_proj/v_proj, r=8, alpha=16, dropout 0.05."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 0
    # The reason line's part of an example's loss beside its Qwen3Guard lines' (1.0: equal).
    reason_weight: float = 1.0


@dataclass(slots=True)
class TrainResult:
    adapter_dir: Path
    steps: int
    final_loss: float
    seconds: float
    card: dict[str, Any] = field(default_factory=dict)


def _device() -> str:
    # lazy: torch and peft only in the training job
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(base_model: str | Path) -> tuple[Any, Any]:
    """(model in float32 on CPU / bfloat16 on GPU, tokenizer)."""
    # lazy: torch and peft only in the training job
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _device()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    model: Any = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=dtype)
    model = model.to(device)
    return model, tokenizer


def encode_example(tokenizer: Any, example: Example) -> tuple[list[int], list[int], int]:
    """(prompt ids, target ids ending in <|im_end|>, how many of the target ids are the
    Qwen3Guard lines: the rest is the reason line and the end of turn; all of them without a
    reason, or when the lines do not tokenise apart from the reason)."""
    turns, template = chat_args(example.chat())
    prompt_text = tokenizer.apply_chat_template(
        turns, tokenize=False, add_generation_prompt=True, **template
    )
    prompt = list(tokenizer.encode(prompt_text, add_special_tokens=False))
    target = [
        *tokenizer.encode(example.target, add_special_tokens=False),
        tokenizer.convert_tokens_to_ids(IM_END),
    ]
    split = len(target)
    if example.with_reason:
        guard_text = example.target.rsplit("\n", 1)[0]
        guard = list(tokenizer.encode(guard_text, add_special_tokens=False))
        if target[: len(guard)] == guard:
            split = len(guard)
    return prompt, target, split


Encoded = tuple[list[int], list[int], int, float]  # prompt, target, split, curation weight


def _batch(tokenizer: Any, rows: Sequence[Encoded], device: str, reason_weight: float = 1.0) -> Any:
    # lazy: torch and peft only in the training job
    import torch

    width = max(len(p) + len(t) for p, t, _, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    # Each taught token's share of its example's loss: 1/n over the Qwen3Guard lines, and
    # 1/m over a reason line's m tokens (see the module docstring).
    shares = torch.zeros((len(rows), width), dtype=torch.float32)
    weights = torch.tensor([w for _, _, _, w in rows], dtype=torch.float32)
    for row, (prompt, target, split, _) in enumerate(rows):
        seq = prompt + target
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(prompt) : len(seq)] = torch.tensor(target)
        shares[row, len(prompt) : len(prompt) + split] = 1.0 / split
        if split < len(target):
            shares[row, len(prompt) + split : len(seq)] = reason_weight / (len(target) - split)
    return ids.to(device), mask.to(device), labels.to(device), shares.to(device), weights.to(device)


def _weighted_loss(logits: Any, labels: Any, shares: Any, weights: Any) -> Any:
    # lazy: torch and peft only in the training job
    import torch

    shifted = logits[:, :-1, :].float()
    gold = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        gold.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(gold.shape)
    per_example = (per_token * shares[:, 1:]).sum(1)
    return (per_example * weights).sum() / weights.sum()


def train_lora(
    base_model: str | Path,
    examples: Sequence[Example],
    out_dir: Path,
    params: LoraParams = LoraParams(),
    card: dict[str, Any] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on `examples` and save it (with its model card) in `out_dir`."""
    # lazy: torch and peft only in the training job
    import torch
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise ValueError("no training examples")
    random.seed(params.seed)
    torch.manual_seed(params.seed)
    started = time.perf_counter()
    model, tokenizer = load_base(base_model)
    device = _device()
    config = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=list(params.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    encoded: list[Encoded] = [(*encode_example(tokenizer, ex), ex.weight) for ex in examples]
    per_epoch = math.ceil(len(encoded) / params.batch_size)
    total = params.max_steps or per_epoch * params.epochs
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=params.learning_rate
    )
    order = random.Random(params.seed)  # noqa: S311 - shuffling, not secrets
    model.train()
    loss_value = math.nan
    step = 0
    while step < total:
        shuffled = list(encoded)
        order.shuffle(shuffled)
        for start in range(0, len(shuffled), params.batch_size):
            if step >= total:
                break
            ids, mask, labels, shares, weights = _batch(
                tokenizer, shuffled[start : start + params.batch_size], device, params.reason_weight
            )
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = _weighted_loss(logits, labels, shares, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step, total, loss_value)
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    model_card = {
        **(card or {}),
        "base_model": str(base_model),
        "examples": len(examples),
        "weighted_examples": sum(ex.weight for ex in examples),
        "trained_with_reasons": any(ex.with_reason for ex in examples),
        "examples_with_reasons": sum(ex.with_reason for ex in examples),
        "steps": step,
        "final_loss": loss_value,
        "train_seconds": round(seconds, 3),
        "device": device,
        "lora": {**asdict(params), "target_modules": list(params.target_modules)},
    }
    (out_dir / "model_card.json").write_text(
        json.dumps(model_card, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    return TrainResult(out_dir, step, loss_value, seconds, model_card)
