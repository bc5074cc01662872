"""`guardstream triage | scorer | sla`: the pipeline's long-lived processes (`api` and
`review` have command groups of their own: `cli.api`, `cli.review`).

Every command runs through this package, so a process's own heavy dependencies (faust for
the SLA timer, FastAPI and asyncpg for the review console) are imported by its command only:
a triage process carries none of them."""

from __future__ import annotations

from guardstream.cli.common import run_process
from guardstream.scorer.main import run as run_scorer
from guardstream.triage.main import run as run_triage


def triage() -> None:
    """Run the triage process (posts → cache hits / score requests / DLQ)."""
    run_process("triage", run_triage)


def scorer() -> None:
    """Run the scorer process (score requests → Qwen3Guard-Gen on vLLM → decisions)."""
    run_process("scorer", run_scorer)


def sla() -> None:
    """Run the SLA timer (contested items unreviewed past their deadline → safe, alerts)."""
    # lazy: faust-streaming only in the SLA timer's process
    from guardstream.sla.main import run as run_sla

    run_process("sla", run_sla)
