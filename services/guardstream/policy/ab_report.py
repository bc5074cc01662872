"""How the arms of a tenant's A/B experiment compare against the reviewers' labels (pure).

A reviewed post belongs to the arm whose pack decided it: its archived decision names the pack
(`policy`, `id@version`), the pack in force (control) or the candidate its `experiment:` names.
Each case is routed again with that pack (the archive keeps the model's verdict, not the
action), as `policy.backtest` does, and counted per arm with the backtest's figures:
`block_rate` (share taken down: block, remove), `review_rate` (share sent to a person),
`false_positive_rate` (of the posts a human called safe, the share taken down) and
`unsafe_recall`. Versions of either pack no longer loaded are routed with the loaded version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import Arm
from guardstream.policy.backtest import TAKEN_DOWN, Case, Side, _action, _ratio
from guardstream.policy.pack import PolicyPack
from guardstream.policy.registry import PolicyRegistry


class NoExperimentError(PermanentError, ValueError):
    """The tenant's pack in force runs no A/B experiment: no arms to compare (not retriable)."""


@dataclass
class AbReport:
    tenant: str
    control: str  # pack refs
    candidate: str
    percent: float
    arms: dict[Arm, Side] = field(default_factory=lambda: {arm: Side() for arm in Arm})
    other: int = 0  # the tenant's cases decided by neither pack (before the experiment, …)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "control_pack": self.control,
            "candidate_pack": self.candidate,
            "percent": self.percent,
            "other_cases": self.other,
            "arms": {arm.value: _figures(side) for arm, side in self.arms.items()},
        }


def _figures(side: Side) -> dict[str, Any]:
    figures = side.figures()
    taken_down = sum(side.actions[a] for a in TAKEN_DOWN)
    return {"block_rate": _ratio(taken_down, side.total), **figures}


def ab_report(
    cases: Iterable[Case], registry: PolicyRegistry, tenant: str, region: str | None = None
) -> AbReport:
    """Per arm of `tenant`'s experiment (its pack for `region`), the reviewed `cases` figures."""
    control = registry.for_post(tenant, region)
    experiment = control.experiment
    if experiment is None:
        raise NoExperimentError(f"pack {control.ref} of tenant {tenant!r} runs no experiment")
    candidate = next(p for p in registry.packs if p.id == experiment.candidate)
    report = AbReport(tenant, control.ref, candidate.ref, float(experiment.percent))
    packs: dict[str, tuple[Arm, PolicyPack]] = {
        control.id: (Arm.CONTROL, control),
        candidate.id: (Arm.CANDIDATE, candidate),
    }
    for case in cases:
        if case.tenant != tenant:
            continue
        found = packs.get(case.policy.partition("@")[0])
        if found is None:
            report.other += 1
            continue
        arm, pack = found
        report.arms[arm].add(_action(registry.by_ref(case.policy) or pack, case), case.human)
    return report
