"""`guardstream triage | scorer | sla`: the pipeline's long-lived processes."""

from __future__ import annotations

from guardstream.cli.common import run_process
from guardstream.scorer.main import run as run_scorer
from guardstream.sla.main import run as run_sla
from guardstream.triage.main import run as run_triage


def triage() -> None:
    """Run the triage process (posts → cache hits / score requests / DLQ)."""
    run_process("triage", run_triage)


def scorer() -> None:
    """Run the scorer process (score requests → Qwen3Guard-Gen on vLLM → decisions)."""
    run_process("scorer", run_scorer)


def sla() -> None:
    """Run the SLA timer (contested items unreviewed past their deadline → safe, alerts)."""
    run_process("sla", run_sla)
