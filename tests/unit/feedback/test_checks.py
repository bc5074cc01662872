"""Checks and balances in what the loop learns from and is judged on: a tenant's adapter
trains on its own archive unless it opted into the shared pool."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from guardstream.contracts.events import Verdict
from guardstream.feedback.job import FeedbackConfig, run_cycle, training_tenants
from guardstream.model.adapters import AdapterRegistry
from guardstream.verdict.archive import Archive
from tests.unit.feedback.test_shadow import T0, label

pytestmark = pytest.mark.unit

S, C, U = Verdict.SAFE, Verdict.CONTROVERSIAL, Verdict.UNSAFE


def test_a_tenants_run_learns_only_from_its_own_archive_unless_it_joined_the_pool(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path / "feedback")
    # Corrections (curated: the model said controversial) of three tenants.
    archive.append(
        [label(n, S, tenant="acme") for n in range(3)]
        + [label(n, U, tenant="beta") for n in range(10, 15)]
        + [label(n, S, tenant="gamma") for n in range(20, 27)]
    )
    registry = AdapterRegistry(tmp_path / "adapters")
    now = T0 + timedelta(days=1)

    def curated(tenant: str, pool: frozenset[str] = frozenset()) -> int:
        # A threshold no archive here reaches: the run reports what it counted, trains nothing.
        config = FeedbackConfig(min_samples=1000, shared_pool=pool)
        report = run_cycle(archive, tmp_path / "no-model", registry, now, config, tenant=tenant)
        assert report.status == "skipped"
        return report.new_curated

    assert curated("acme") == 3
    assert curated("beta") == 5
    assert curated("acme", frozenset({"beta"})) == 3  # beta's opt-in does not open acme's
    assert curated("acme", frozenset({"acme", "beta"})) == 8  # both joined: one pool
    assert curated("gamma", frozenset({"acme", "beta"})) == 7  # not a member: its own only
    assert curated("*") == 15  # the adapter serving every tenant
    assert training_tenants("acme", frozenset()) == {"acme"}
    assert training_tenants("acme", frozenset({"acme", "beta"})) == {"acme", "beta"}
    assert training_tenants("*", frozenset({"acme"})) is None
