"""The SLA side of the oracle (RELIABILITY.md 19, 20): read everything the SLA app published.

Checks, per contested post: downgraded exactly when expected (one distinct downgrade decision,
emitted no more often than the scenario allows: `emission_bound`, counted per post), one
distinct SLA event / alert per (post, kind), and nothing for posts a human reviewed in time.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from guardstream.contracts.events import Alert, Decision, DlqRecord, SlaEvent, Source
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.settings import Settings
from tests.support.oracle import read_all


@dataclass
class SlaOutcome:
    downgrades: dict[str, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    downgrades_emitted: Counter[str] = field(default_factory=Counter)  # records per post
    decisions: dict[str, Decision] = field(default_factory=dict)
    events: dict[tuple[str, str], set[bytes]] = field(default_factory=lambda: defaultdict(set))
    alerts: dict[tuple[str, str], set[bytes]] = field(default_factory=lambda: defaultdict(set))
    dlq: list[DlqRecord] = field(default_factory=list)

    @property
    def downgrade_emissions(self) -> int:
        return self.downgrades_emitted.total()

    @property
    def re_emissions(self) -> int:
        """Identical downgrades published again: every record past the first of its post."""
        return self.downgrade_emissions - len(self.downgrades_emitted)

    def kinds(self, post_id: str) -> set[str]:
        return {kind for pid, kind in self.events if pid == post_id}

    def alert_kinds(self, post_id: str) -> set[str]:
        return {kind for pid, kind in self.alerts if pid == post_id}


async def collect_sla(settings: Settings) -> SlaOutcome:
    names = TopicNames(settings.namespace)
    out = SlaOutcome()
    for raw in await read_all(settings, [names[Topic.ALLOW]]):
        decision = Decision.from_json(raw)
        if decision.source is Source.SLA_TIMEOUT:
            out.downgrades[decision.post_id].add(raw)
            out.decisions[decision.post_id] = decision
            out.downgrades_emitted[decision.post_id] += 1
    for raw in await read_all(settings, [names[Topic.SLA_EVENTS]]):
        event = SlaEvent.from_json(raw)
        out.events[(event.post_id, event.kind.value)].add(raw)
    for raw in await read_all(settings, [names[Topic.ALERTS]]):
        alert = Alert.from_json(raw)
        out.alerts[(alert.post_id or "", alert.kind)].add(raw)
    out.dlq = [DlqRecord.from_json(raw) for raw in await read_all(settings, [names[Topic.DLQ]])]
    return out


def assert_sla_invariants(
    outcome: SlaOutcome,
    *,
    expired: set[str],
    in_time: set[str],
    max_emissions_per_post: int,
) -> None:
    downgraded = set(outcome.downgrades)
    missing = expired - downgraded
    assert not missing, f"{len(missing)} items never downgraded, e.g. {sorted(missing)[:3]}"
    wrong = downgraded & in_time
    assert not wrong, f"reviewed in time but downgraded: {sorted(wrong)[:3]}"
    twice = {p: v for p, v in outcome.downgrades.items() if len(v) > 1}
    assert not twice, f"{len(twice)} items with different downgrade decisions"
    over = {p: n for p, n in outcome.downgrades_emitted.items() if n > max_emissions_per_post}
    assert not over, f"downgrades emitted more than {max_emissions_per_post} times: {over}"
    for key, payloads in {**outcome.events, **outcome.alerts}.items():
        assert len(payloads) == 1, f"{key}: {len(payloads)} different payloads"
    for post_id in expired:
        assert "expired" in outcome.kinds(post_id), post_id
        assert "sla_breach" in outcome.alert_kinds(post_id), post_id
    for post_id in in_time:
        assert "expired" not in outcome.kinds(post_id), post_id
