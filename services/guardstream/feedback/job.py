"""The weekly feedback cycle: archive → curation → LoRA training → held-out evaluation →
shadow on live traffic → promotion.

Trigger: it trains only when at least `min_samples` curated samples were reviewed since the
last training run (state in `<root>/runs/state.json`) and no candidate of the tenant is still
in shadow; `force` skips both checks. Every run trains from the base model on everything
curated so far (adapters never stack) and evaluates the candidate and the adapter now serving
on the same held-out samples. A candidate that beats the serving one by `promotion_margin` on
held-out curated samples without losing more than `regression_tolerance` on the held-out
anchors becomes the tenant's shadow candidate: the scorers score live traffic with it beside
the serving adapter, actioning nothing. `evaluate_shadow` (every run of the job, before
training) joins those shadow verdicts with later human labels and promotes the candidate only
when it wins there too (`feedback/shadow.py`) and a person approved it (`approve`, recorded
in the registry; `ShadowConfig.require_approval` off is the deployment's opt-in to automatic
promotion); otherwise it keeps shadowing or is retired. A tenant's run learns only from that
tenant's archive unless it joined the shared pool (`training_tenants`).
Poisoning: every run audits the reviewers of the window (`feedback/reviewers.py`) and names
those whose labels disagree with the other judges far more often than the others' do; the gate
rejects a candidate any of whose sets holds such a suspect's labels, whatever its metrics.
Rejected candidates are registered too, with their metrics, so the history shows every
attempt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from guardstream.contracts import ids
from guardstream.contracts.events import ShadowRecord
from guardstream.contracts.feedback import FeedbackSample
from guardstream.contracts.ids import stable_id
from guardstream.contracts.redaction import redact
from guardstream.feedback.curation import Curated, Curation, CurationConfig, Prescreen, curate
from guardstream.feedback.dataset import Example, NotTrainable, example
from guardstream.feedback.evaluate import LabelScorer, Metrics, evaluate
from guardstream.feedback.reviewers import ReviewerStanding, SuspectConfig, audit_reviewers
from guardstream.feedback.shadow import (
    ShadowConfig,
    ShadowMetrics,
    ShadowOutcome,
    shadow_decision,
    shadow_metrics,
)
from guardstream.feedback.train import LoraParams, train_lora
from guardstream.model.adapters import EVERY_TENANT, AdapterRegistry
from guardstream.policy.pack import Redaction
from guardstream.verdict.archive import Archive


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    min_samples: int = 500
    promotion_margin: float = 0.02
    regression_tolerance: float = 0.02
    curation: CurationConfig = field(default_factory=CurationConfig)
    lora: LoraParams = field(default_factory=LoraParams)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    # Targets carry the reviewer's reason as a `Reason:` line (`feedback/dataset.py`).
    reasons: bool = False
    # Tenants that opted into the shared pool: each trains on every pool member's archive.
    # Any other tenant's adapter trains on its own archive only.
    shared_pool: frozenset[str] = frozenset()
    # Each pack's `redact` by pack id (a sample's `policy` is `id@version`); a pack not listed
    # gets the default (on): an unknown pack's samples are redacted, never kept raw.
    redaction: Mapping[str, Redaction] = field(default_factory=dict)
    suspects: SuspectConfig = field(default_factory=SuspectConfig)


@dataclass(slots=True)
class CycleReport:
    status: str  # "skipped" | "shadowing" (passed held-out, now in shadow) | "rejected"
    new_curated: int
    detail: str
    adapter_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, float | int]] = field(default_factory=dict)
    # Reviewers whose labels look like poisoning (`ReviewerStanding.as_dict`), named here and
    # on the model card.
    suspects: list[dict[str, str | int | float | bool]] = field(default_factory=list)


def for_training(sample: FeedbackSample, redaction: Mapping[str, Redaction]) -> FeedbackSample:
    """`sample` as training and evaluation read it: personal data replaced as its pack's
    `redact.training` says (the archive may hold raw text: `redact.archive` off, or written
    before redaction)."""
    rule = redaction.get(sample.policy.partition("@")[0], Redaction())
    if not rule.training:
        return sample
    prompt = None if sample.prompt is None else redact(sample.prompt, rule.kinds)
    return sample.model_copy(update={"text": redact(sample.text, rule.kinds), "prompt": prompt})


def _examples(
    items: list[Curated],
    problems: list[str],
    redaction: Mapping[str, Redaction],
    reasons: bool = False,
) -> list[Example]:
    out = []
    for item in items:
        try:
            out.append(example(for_training(item.sample, redaction), item.weight, reasons=reasons))
        except NotTrainable as exc:
            problems.append(f"{item.sample.sample_id}: {exc}")
    return out


def training_tenants(tenant: str, shared_pool: frozenset[str]) -> frozenset[str] | None:
    """Whose reviews `tenant`'s adapter may learn from (None: every tenant's, for the
    adapter serving every tenant): its own, plus the pool's when it opted into the pool."""
    if tenant == EVERY_TENANT:
        return None
    return frozenset({tenant, *shared_pool}) if tenant in shared_pool else frozenset({tenant})


def _state_path(root: Path) -> Path:
    return root / "runs" / "state.json"


def last_run_until(root: Path) -> datetime | None:
    path = _state_path(root)
    if not path.is_file():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["last_until"])


def _adapter_id(now: datetime, curation: Curation) -> str:
    samples = sorted(c.sample.sample_id for c in curation.train + curation.anchor_train)
    digest = stable_id(ids.TRAINING_SET, *samples)
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
    shadowing = registry.snapshot(fresh=True).shadow.get(tenant)
    if shadowing is not None and not force:
        return CycleReport(
            "skipped",
            0,
            f"candidate {shadowing} is in shadow: training waits for its shadow evaluation",
            shadowing,
        )
    since = last_run_until(archive.root)
    allowed = training_tenants(tenant, config.shared_pool)
    everything = [s for s in archive.read(until=now) if allowed is None or s.tenant in allowed]
    recent = [s for s in everything if since is None or s.reviewed_at >= since]
    # The trigger counts new corrections; the reviewer cap bounds what a set holds, not this.
    new_curated = curate(recent, replace(config.curation, reviewer_cap=1.0)).curated
    standings = audit_reviewers(everything, config.suspects)
    suspects = [s for s in standings if s.suspect]
    named = [s.as_dict() for s in suspects]
    # An adapter serving the tenant learnt from data erased since (`verdict.erasers`): train
    # again from what the archive holds now, however few new samples there are.
    serving_now = registry.snapshot(fresh=True).serving_for(tenant)
    if serving_now is not None and registry.card(serving_now.adapter_id).get("retrain_required"):
        force = True
    if new_curated < config.min_samples and not force:
        return CycleReport(
            "skipped",
            new_curated,
            f"{new_curated} curated samples since the last run; training needs "
            f"{config.min_samples}",
            suspects=named,
        )
    curation = curate(everything, config.curation, prescreen)
    problems: list[str] = []
    train = _examples(
        curation.train + curation.anchor_train, problems, config.redaction, config.reasons
    )
    held_out = _examples(curation.held_out, problems, config.redaction)
    anchors = _examples(curation.anchor_held_out, problems, config.redaction)
    counts = {
        "samples": len(everything),
        "curated": curation.curated,
        "train": len(curation.train),
        "held_out": len(curation.held_out),
        "anchor_train": len(curation.anchor_train),
        "anchor_held_out": len(curation.anchor_held_out),
        "held_for_senior": len(curation.held_for_senior),
        "superseded": curation.superseded,
        "capped": curation.capped,
        "not_trainable": len(problems),
    }
    if not train:
        return CycleReport(
            "skipped", new_curated, "nothing trainable", counts=counts, suspects=named
        )

    adapter_id = _adapter_id(now, curation)
    out_dir = archive.root / "runs" / adapter_id
    card: dict[str, Any] = {
        "adapter_id": adapter_id,
        "data_window": {"since": None, "until": now.isoformat()},
        "previous_run_until": since.isoformat() if since else None,
        "tenant": tenant,
        "trained_on_tenants": sorted(allowed) if allowed is not None else [EVERY_TENANT],
        "counts": counts,
        "not_trainable": problems[:50],
        # Samples per reviewer in each set (ids as the archive stores them), each within
        # `reviewer_cap`, so an auditor sees whose labels the adapter learnt and was judged on.
        "reviewer_contributions": curation.contributions,
        "reviewer_cap": config.curation.reviewer_cap,
        # Every reviewer's disagreement with the other judges; suspects first.
        "reviewer_audit": [s.as_dict() for s in standings],
    }
    result = train_lora(base_model, train, out_dir, config.lora, card, progress)
    # The registry's card says it too: the scorer reads it there (`Adapter.trained_with_reasons`).
    card["trained_with_reasons"] = result.card["trained_with_reasons"]
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
    wins, why = suspect_gate(wins, why, suspects, curation.contributions)
    card.update(
        {
            "serving_before": serving.adapter_id if serving else None,
            "metrics": {k: m.as_dict() for k, m in metrics.items()},
            "held_out_passed": wins,
            "promoted": False,  # only the shadow evaluation promotes
            "decision": why,
        }
    )
    _merge_card(out_dir, card)
    registry.register(adapter_id, out_dir, card, tenant=tenant)
    if wins:
        replaced = registry.start_shadow(adapter_id)
        if replaced is not None:
            _merge_card(archive.root / "runs" / replaced, registry.card(replaced))
        why += "; now in shadow on live traffic"
    _state_path(archive.root).write_text(json.dumps({"last_until": now.isoformat()}) + "\n")
    return CycleReport(
        "shadowing" if wins else "rejected",
        new_curated,
        why,
        adapter_id,
        counts,
        {k: m.as_dict() for k, m in metrics.items()},
        named,
    )


def suspect_gate(
    wins: bool,
    why: str,
    suspects: list[ReviewerStanding],
    contributions: dict[str, dict[str, int]],
) -> tuple[bool, str]:
    """The evaluation's decision, overruled when a suspected poisoner's labels are in any of
    the candidate's sets (what it learnt from or was judged on): the metrics of a candidate
    built on labels that may be wrong prove nothing. A suspect whose labels were all capped
    out is still named."""
    if not suspects:
        return wins, why
    inside = [s for s in suspects if any(s.reviewer in per for per in contributions.values())]
    named = "; ".join(s.describe() for s in suspects)
    if not inside:
        return wins, f"{why}; suspected reviewers (none of their labels used): {named}"
    return False, (
        f"trained or judged on labels of suspected reviewers ({named}); the evaluation said: {why}"
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


def _merge_card(run_dir: Path, fields: dict[str, Any]) -> None:
    """Merge `fields` into the run's model card (the report reads the runs' cards)."""
    path = run_dir / "model_card.json"
    if not run_dir.is_dir():
        return  # registered by an operator, not by a run of this archive
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(
        json.dumps({**current, **fields}, indent=2, ensure_ascii=False, default=str) + "\n",
        encoding="utf-8",
    )


AWAITING_APPROVAL = "awaiting_approval"


def needs_approval(card: dict[str, Any], config: ShadowConfig) -> bool:
    """Whether promoting the adapter with `card` still waits for a person's approval."""
    return config.require_approval and not isinstance(card.get("approval"), dict)


@dataclass(slots=True)
class ShadowReport:
    # "none" (no candidate) | "keep" | "promote" | "retire" | "awaiting_approval" (passed the
    # shadow gate; promotion waits for `guardstream feedback approve`)
    status: str
    detail: str
    candidate: str | None = None
    metrics: ShadowMetrics | None = None


def evaluate_shadow(
    archive: Archive,
    registry: AdapterRegistry,
    records: list[ShadowRecord],
    now: datetime,
    config: ShadowConfig | None = None,
    tenant: str = EVERY_TENANT,
    apply: bool = True,
) -> ShadowReport:
    """Judge `tenant`'s shadow candidate on `records` (the shadow topic) and the archive's
    human labels; with `apply`, promote or retire it and write the metrics into its card."""
    snapshot = registry.snapshot(fresh=True)
    candidate = snapshot.shadow.get(tenant)
    if candidate is None:
        return ShadowReport("none", f"no candidate is in shadow for {tenant!r}")
    serving = snapshot.serving_for(tenant)
    card = registry.card(candidate)
    since = datetime.fromisoformat(card.get("shadow_since") or now.isoformat())
    config = config or ShadowConfig()
    metrics = shadow_metrics(
        records,
        archive.read(until=now),
        candidate,
        serving.adapter_id if serving else None,
        config.min_judges,
        config.reviewer_cap,
    )
    outcome, why = shadow_decision(metrics, config, since, now)
    if outcome is ShadowOutcome.PROMOTE and needs_approval(card, config) and not apply:
        return ShadowReport(AWAITING_APPROVAL, f"{why}; awaiting approval", candidate, metrics)
    if apply:
        evidence = {"shadow": {**metrics.as_dict(), "evaluated_at": now.isoformat()}}
        # Awaiting approval only while the latest evaluation passed (set again just below).
        registry.update_card(
            candidate, {**evidence, "shadow_decision": why, "awaiting_approval": False}
        )
        if outcome is ShadowOutcome.PROMOTE and needs_approval(card, config):
            registry.update_card(candidate, {"awaiting_approval": True})
            why += f"; awaiting approval (guardstream feedback approve {candidate} --by ID)"
            _merge_card(archive.root / "runs" / candidate, registry.card(candidate))
            return ShadowReport(AWAITING_APPROVAL, why, candidate, metrics)
        if outcome is ShadowOutcome.PROMOTE:
            registry.promote(candidate, tenant)
            registry.update_card(
                candidate, {"promoted": True, "awaiting_approval": False, "decision": why}
            )
        elif outcome is ShadowOutcome.RETIRE:
            registry.end_shadow(candidate, "retired", why)
        _merge_card(archive.root / "runs" / candidate, registry.card(candidate))
    return ShadowReport(outcome.value, why, candidate, metrics)


@dataclass(slots=True)
class ApprovalReport:
    adapter_id: str
    by: str
    at: str
    promoted: bool  # now: it had passed the shadow gate and only waited for this approval
    detail: str


def approve(
    archive_root: Path, registry: AdapterRegistry, adapter_id: str, by: str
) -> ApprovalReport:
    """Record `by`'s approval of `adapter_id` in the registry (card and history). A shadow
    candidate that already passed the shadow gate and waits only for this is promoted now;
    any other is promoted by the next shadow evaluation it passes (`evaluate_shadow`)."""
    record = registry.approve(adapter_id, by)
    snapshot = registry.snapshot(fresh=True)
    card = registry.card(adapter_id)
    scopes = [scope for scope, chosen in snapshot.shadow.items() if chosen == adapter_id]
    promoted = bool(scopes) and card.get("awaiting_approval") is True
    if promoted:
        for scope in scopes:
            registry.promote(adapter_id, scope)
        why = f"approved by {by}; {card.get('shadow_decision', 'passed the shadow gate')}"
        registry.update_card(
            adapter_id, {"promoted": True, "awaiting_approval": False, "decision": why}
        )
        detail = f"approved by {by} and promoted for {', '.join(scopes)}"
    elif scopes:
        detail = f"approved by {by}; promoted once it passes the shadow evaluation"
    else:
        detail = f"approved by {by}; it is not in shadow, so nothing is promoted now"
    _merge_card(archive_root / "runs" / adapter_id, registry.card(adapter_id))
    return ApprovalReport(adapter_id, record["by"], record["at"], promoted, detail)
