"""The weekly feedback cycle: archive → curation → LoRA training → evaluation → promotion.

Trigger: it trains only when at least `min_samples` curated samples were reviewed since the
last training run (state in `<root>/runs/state.json`); `force` skips that check. Every run
trains from the base model on everything curated so far (adapters never stack), evaluates the
candidate and the adapter now serving on the same held-out samples, and promotes the
candidate only if it beats the serving one by `promotion_margin` on held-out curated samples
without losing more than `regression_tolerance` on the held-out anchors. Rejected candidates
are registered too, with their metrics, so the history shows every attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from guardstream.core.adapters import EVERY_TENANT, AdapterRegistry
from guardstream.feedback.archive import Archive
from guardstream.feedback.curation import Curated, Curation, CurationConfig, Prescreen, curate
from guardstream.feedback.dataset import Example, NotTrainable, example
from guardstream.feedback.evaluate import LabelScorer, Metrics, evaluate
from guardstream.feedback.train import LoraParams, train_lora


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    min_samples: int = 500
    promotion_margin: float = 0.02
    regression_tolerance: float = 0.02
    curation: CurationConfig = field(default_factory=CurationConfig)
    lora: LoraParams = field(default_factory=LoraParams)


@dataclass(slots=True)
class CycleReport:
    status: str  # "skipped" | "promoted" | "rejected"
    new_curated: int
    detail: str
    adapter_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, float | int]] = field(default_factory=dict)


def _examples(items: list[Curated], problems: list[str]) -> list[Example]:
    out = []
    for item in items:
        try:
            out.append(example(item.sample, item.weight))
        except NotTrainable as exc:
            problems.append(f"{item.sample.sample_id}: {exc}")
    return out


def _state_path(root: Path) -> Path:
    return root / "runs" / "state.json"


def last_run_until(root: Path) -> datetime | None:
    path = _state_path(root)
    if not path.is_file():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["last_until"])


def _adapter_id(now: datetime, curation: Curation) -> str:
    ids = sorted(c.sample.sample_id for c in curation.train + curation.anchor_train)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8]
    return f"fb-{now:%Y%m%d-%H%M%S}-{digest}"


def run_cycle(
    archive: Archive,
    base_model: str | Path,
    registry: AdapterRegistry,
    now: datetime,
    config: FeedbackConfig = FeedbackConfig(),
    prescreen: Prescreen | None = None,
    force: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    tenant: str = EVERY_TENANT,
) -> CycleReport:
    """One cycle for `tenant`'s adapter (every tenant by default); see the module docstring."""
    since = last_run_until(archive.root)
    everything = archive.read(until=now)
    recent = [s for s in everything if since is None or s.reviewed_at >= since]
    new_curated = curate(recent, config.curation).curated
    if new_curated < config.min_samples and not force:
        return CycleReport(
            "skipped",
            new_curated,
            f"{new_curated} curated samples since the last run; training needs "
            f"{config.min_samples}",
        )
    curation = curate(everything, config.curation, prescreen)
    problems: list[str] = []
    train = _examples(curation.train + curation.anchor_train, problems)
    held_out = _examples(curation.held_out, problems)
    anchors = _examples(curation.anchor_held_out, problems)
    counts = {
        "samples": len(everything),
        "curated": curation.curated,
        "train": len(curation.train),
        "held_out": len(curation.held_out),
        "anchor_train": len(curation.anchor_train),
        "anchor_held_out": len(curation.anchor_held_out),
        "held_for_senior": len(curation.held_for_senior),
        "superseded": curation.superseded,
        "not_trainable": len(problems),
    }
    if not train:
        return CycleReport("skipped", new_curated, "nothing trainable", counts=counts)

    adapter_id = _adapter_id(now, curation)
    out_dir = archive.root / "runs" / adapter_id
    card: dict[str, Any] = {
        "adapter_id": adapter_id,
        "data_window": {"since": None, "until": now.isoformat()},
        "previous_run_until": since.isoformat() if since else None,
        "counts": counts,
        "not_trainable": problems[:50],
    }
    train_lora(base_model, train, out_dir, config.lora, card, progress)
    # Labels the prescreen doubts, for a senior: not trained on, not lost.
    (out_dir / "held_for_senior.json").write_text(
        json.dumps(
            [
                {"sample_id": s.sample_id, "post_id": s.post_id, "prescreen": v.value, "p": p}
                for s, v, p in curation.held_for_senior
            ],
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )

    serving = registry.snapshot(fresh=True).serving_for(tenant)
    current = LabelScorer(base_model, serving.path if serving else None)
    candidate = LabelScorer(base_model, out_dir)
    metrics: dict[str, Metrics] = {
        "current_held_out": evaluate(current, held_out),
        "candidate_held_out": evaluate(candidate, held_out),
        "current_anchors": evaluate(current, anchors),
        "candidate_anchors": evaluate(candidate, anchors),
    }
    wins, why = promotion_decision(metrics, config)
    card.update(
        {
            "serving_before": serving.adapter_id if serving else None,
            "metrics": {k: m.as_dict() for k, m in metrics.items()},
            "promoted": wins,
            "decision": why,
        }
    )
    (out_dir / "model_card.json").write_text(
        json.dumps(
            {**json.loads((out_dir / "model_card.json").read_text()), **card},
            indent=2,
            ensure_ascii=False,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    registry.register(adapter_id, out_dir, card, tenant=tenant)
    if wins:
        registry.promote(adapter_id)
    _state_path(archive.root).write_text(json.dumps({"last_until": now.isoformat()}) + "\n")
    return CycleReport(
        "promoted" if wins else "rejected",
        new_curated,
        why,
        adapter_id,
        counts,
        {k: m.as_dict() for k, m in metrics.items()},
    )


def promotion_decision(metrics: dict[str, Metrics], config: FeedbackConfig) -> tuple[bool, str]:
    held_now, held_new = metrics["current_held_out"], metrics["candidate_held_out"]
    anchors_now, anchors_new = metrics["current_anchors"], metrics["candidate_anchors"]
    if held_new.n == 0:
        return False, "no held-out curated samples: the candidate cannot be judged"
    gain = held_new.accuracy - held_now.accuracy
    if gain < config.promotion_margin:
        return False, (
            f"held-out accuracy {held_new.accuracy:.3f} vs serving {held_now.accuracy:.3f}: "
            f"gain {gain:+.3f} below the margin {config.promotion_margin:.3f}"
        )
    loss = anchors_now.accuracy - anchors_new.accuracy
    if anchors_new.n and loss > config.regression_tolerance:
        return False, (
            f"anchor accuracy fell {loss:.3f} ({anchors_now.accuracy:.3f} → "
            f"{anchors_new.accuracy:.3f}), more than the tolerance {config.regression_tolerance}"
        )
    return True, (
        f"held-out accuracy {held_now.accuracy:.3f} → {held_new.accuracy:.3f} "
        f"(+{gain:.3f}); anchors {anchors_now.accuracy:.3f} → {anchors_new.accuracy:.3f}"
    )
