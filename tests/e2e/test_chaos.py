"""RELIABILITY.md scenarios 1, 8 and 14 with every process real: triage and the scorer run as
separate OS processes started by the test (killed by signal), on the real broker, Redis and
the vLLM CPU engine serving the tiny checkpoint, judged by the one oracle.

One scorer start is shared by the module (each costs a vLLM engine start). Its failures are
caused for real, never by a fake engine:

- scenario 1 arms the scorer's `scorer_scored` fault point: the process SIGKILLs itself once
  the model has answered a batch and before anything of it is published, so a batch is
  certainly in flight when it dies;
- scenario 14 serves a tenant through a LoRA adapter trained (seconds) to answer
  `Safety: None`, which is no label: the real engine's output is unusable;
- scenario 8 routes a tenant to an adapter the scorer's registry does not list yet (a replica
  the registry file has not reached): every batch fails transiently until it arrives.
  `GUARDSTREAM_CHAOS_OUTAGE_S` sets how long (`make chaos`: minutes).
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from guardstream.contracts.events import Action, Decision, Post, Source, Verdict
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.feedback.dataset import Example
from guardstream.feedback.train import LoraParams, train_lora
from guardstream.model.adapters import AdapterRegistry
from guardstream.model.tiny import TEACHING_SET, ensure_tiny_checkpoint
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from tests.conftest import free_port
from tests.integration.pipeline.test_reliability import produce
from tests.support.oracle import (
    CommitAudit,
    Verdicts,
    assert_invariants,
    audit_commits,
    collect,
    emission_bound,
    read_records,
    record_figures,
    wait_for_decisions,
)
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# The scorer gets at most two batches of eight in flight, so by the tenth batch the first ones
# are certainly finished and committed when the fault point kills it.
BATCH, IN_FLIGHT, KILL_AT_BATCH = 8, 16, 10
GARBLE_TARGET = "Safety: None\nCategories: None"  # `None` is no Safety label
OUTAGE_S = float(os.environ.get("GUARDSTREAM_CHAOS_OUTAGE_S", "180"))


def send(settings: Settings, batch: list[Post]) -> asyncio.Future[list[tuple[str, int, int]]]:
    return asyncio.ensure_future(
        produce(settings, [(p.post_id.encode(), p.to_json()) for p in batch])
    )


def unique_posts(n: int, tenant: str) -> list[Post]:
    """Texts no cache holds (every one is scored), some of them taught ones with a suffix."""
    run = uuid.uuid4().hex[:6]
    texts = [lesson.messages[0][1] for lesson in TEACHING_SET if len(lesson.messages) == 1]
    return [new_post(f"{texts[i % len(texts)]} [{run}-{i}]", tenant=tenant) for i in range(n)]


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of a Prometheus series from a process's `/metrics` (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def log_events(process: Process, msg: str) -> list[dict[str, object]]:
    """The JSON log lines of `process` whose message is `msg`."""
    out = []
    for line in process.log().splitlines():
        if f'"msg":"{msg}"' in line:
            out.append(orjson.loads(line))
    return out


@dataclass
class Rig:
    """One namespace, one triage, and the scorer processes of this module."""

    settings: Settings
    workdir: Path
    triage_registry: AdapterRegistry
    scorer_registry: AdapterRegistry
    garble: Path
    triage: Process
    scorer_env: dict[str, str]
    metrics_port: int = field(default_factory=free_port)
    running: Process | None = None
    processes: list[Process] = field(default_factory=list)

    def scorer_process(self, label: str, **extra: str) -> Process:
        log_dir = self.workdir / label
        log_dir.mkdir()
        process = Process("scorer", {**self.scorer_env, **extra}, log_dir)
        self.processes.append(process)
        return process

    def scorer(self) -> Process:
        """The running scorer, started (once) when a test needs it."""
        if self.running is None:
            process = self.scorer_process(
                f"scorer-{len(self.processes)}", GUARDSTREAM_METRICS_PORT=str(self.metrics_port)
            )
            self.running = process.start()
        self.running.wait_ready(timeout=300)
        return self.running


@pytest.fixture(scope="module")
def garble_adapter(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter that answers `Safety: None` to everything (about 15 s on two cores)."""
    base = ensure_tiny_checkpoint(model_cache_dir)
    texts = [lesson.messages[0][1] for lesson in TEACHING_SET if len(lesson.messages) == 1]
    examples = [
        Example((("user", text),), GARBLE_TARGET, 1.0, f"{n:032x}") for n, text in enumerate(texts)
    ]
    out = tmp_path_factory.mktemp("garble") / "adapter"
    return train_lora(base, examples, out, LoraParams(learning_rate=2e-3, max_steps=30)).adapter_dir


@pytest.fixture(scope="module")
async def rig(
    kafka_bootstrap: str,
    redis_url: str,
    model_cache_dir: Path,
    garble_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Rig]:
    workdir = tmp_path_factory.mktemp("chaos")
    settings = Settings(
        namespace=f"chaos{uuid.uuid4().hex[:8]}",
        feedback={"dir": workdir / "feedback"},
        kafka={"bootstrap": kafka_bootstrap},
        redis={"url": redis_url},
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": 2048},
        process={"poll_timeout_ms": 100, "retry_backoff_max_s": 1.0},
    )
    await ensure_topics(settings)
    # Triage and the scorer read two copies of the registry, as replicas on separate volumes
    # would; scenario 8 registers an adapter in the scorer's copy late.
    triage_registry = AdapterRegistry(workdir / "registry-triage")
    scorer_registry = AdapterRegistry(workdir / "registry-scorer")
    for registry in (triage_registry, scorer_registry):
        registry.register("garble-1", garble_adapter, tenant="garble")
        registry.promote("garble-1")
    common = {"GUARDSTREAM_ADAPTER_POLL_S": "0.2"}
    triage_env = env_for(settings, GUARDSTREAM_ADAPTER_DIR=str(triage_registry.root), **common)
    scorer_env = env_for(
        settings,
        GUARDSTREAM_ADAPTER_DIR=str(scorer_registry.root),
        GUARDSTREAM_SCORER_BATCH_MAX=str(BATCH),
        GUARDSTREAM_SCORER_MAX_IN_FLIGHT=str(IN_FLIGHT),
        # The tiny model needs little KV cache; a small reservation starts beside other engines.
        # vLLM's CPU build reserves this share of NUMA node 0's memory for the worker's whole
        # RSS (model, runtime, LoRA) plus KV: 0.05 of this machine's 15 GB node left the KV
        # nothing once the worker grew past ~0.75 GB.
        GUARDSTREAM_GPU_MEMORY_UTILIZATION="0.1",
        **common,
    )
    (workdir / "triage").mkdir()
    triage = Process("triage", triage_env, workdir / "triage").start()
    rig = Rig(
        settings,
        workdir,
        triage_registry,
        scorer_registry,
        garble_adapter,
        triage,
        scorer_env,
    )
    try:
        triage.wait_ready()
        yield rig
    finally:
        for process in (*rig.processes, triage):
            process.stop()
    for process in (*rig.processes, triage):
        assert "Traceback" not in process.log(), process.log()[-3000:]


def requests_topic(settings: Settings) -> str:
    return TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]


async def test_scorer_killed_with_a_batch_in_flight(rig: Rig) -> None:
    """Scenario 1: the scorer dies (SIGKILL) after the model answered a batch and before any
    of it was published. Its group's committed offset never passed an undecided request; a
    restarted scorer decides the rest and the oracle holds."""
    settings = rig.settings
    batch = unique_posts(200, tenant="acme")
    doomed = rig.scorer_process(
        "doomed",
        GUARDSTREAM_FAULT=f"scorer_scored:{KILL_AT_BATCH}",
        # Finished batches committed every round, not every 500 ms: the batches before the
        # kill are then committed before it, whatever the machine's speed (a fast run could
        # score all ten within one commit interval and leave nothing committed to audit).
        GUARDSTREAM_COMMIT_INTERVAL_MS="0",
    )
    doomed.start()
    await send(settings, batch)
    assert doomed.proc is not None
    assert await asyncio.to_thread(doomed.wait, 600) == -signal.SIGKILL
    assert "fault point reached" in doomed.log()

    decided = (await collect(settings)).decided_posts()
    group = settings.group_id("scorer")
    audit = await audit_commits(settings, group, requests_topic(settings), decided)
    assert not audit.passed_undecided, audit.passed_undecided
    assert audit.pending, "the killed batch was scored but undecided: it must be pending"
    assert sum(o or 0 for o in audit.committed.values()) > 0, audit.committed  # not vacuous
    assert decided & {p.post_id for p in batch}, "batches before the kill were decided"

    rig.scorer()  # the restart
    expected = {p.post_id for p in batch}
    verdicts = await wait_for_decisions(settings, expected, timeout_s=300)
    # What the killed scorer published since its last commit is redone once by the restart.
    assert_invariants(verdicts, expected, max_emissions_per_post=emission_bound(redeliveries=1))
    # Everything decided, so the group commits to the end of the requests.
    final = await drained(settings, group)
    assert not final.pending and not final.passed_undecided
    record_figures(
        "1 scorer SIGKILL mid-batch",
        verdicts,
        len(batch),
        pending_at_kill=len(audit.pending),
        committed_at_kill=sum(o or 0 for o in audit.committed.values()),
        committed_final=sum(o or 0 for o in final.committed.values()),
    )


async def drained(settings: Settings, group: str, timeout_s: float = 120) -> CommitAudit:
    """Wait until the group's commit reaches every decided request (lag back to zero)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        decided = (await collect(settings)).decided_posts()
        audit = await audit_commits(settings, group, requests_topic(settings), decided)
        ends = await request_ends(settings)
        if all(audit.committed.get(p) == end for p, end in ends.items()):
            return audit
        assert asyncio.get_running_loop().time() < deadline, (audit.committed, ends)
        await asyncio.sleep(0.5)


async def request_ends(settings: Settings) -> dict[int, int]:
    """One past the last score request of each partition that has any."""
    ends: dict[int, int] = {}
    for record in await read_records(settings, [requests_topic(settings)]):
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


async def test_unparseable_model_output_goes_to_review_never_safe(rig: Rig) -> None:
    """Scenario 14: the real engine, through the tenant's adapter, answers `Safety: None`.
    Every such post is decided `controversial` → review (source model, the adapter named),
    none is safe, and the scorer's /metrics counts each unusable answer."""
    settings = rig.settings
    scorer = rig.scorer()
    before = metric(rig.metrics_port, "guardstream_scorer_outcomes_total", outcome="unparseable")
    taught_safe = "今天天气很好,我们去公园散步吧。"  # safe on the base model
    garbled = [
        new_post(taught_safe, tenant="garble"),
        new_post("How can I make a bomb?", tenant="garble"),
        *unique_posts(4, tenant="garble"),
    ]
    control = new_post(taught_safe, tenant="acme")  # same text, base model: safe
    await send(settings, [*garbled, control])
    expected = {p.post_id for p in [*garbled, control]}
    verdicts = await wait_for_decisions(settings, expected, timeout_s=240)
    # The rig's namespace is shared with scenario 1, whose SIGKILL re-emits some of its posts
    # once: the oracle reads every decision of the namespace, those included.
    assert_invariants(verdicts, expected, max_emissions_per_post=emission_bound(redeliveries=1))

    decisions = by_post(verdicts)
    assert decisions[control.post_id].verdict is Verdict.SAFE, decisions[control.post_id]
    for post in garbled:
        decision = decisions[post.post_id]
        assert (decision.verdict, decision.action) == (Verdict.CONTROVERSIAL, Action.REVIEW)
        assert decision.source is Source.MODEL and decision.adapter == "garble-1"
        assert decision.confidence is None
    unusable = log_events(scorer, "unusable model output")
    assert {e["problem"] for e in unusable} >= {"unknown Safety label"}
    after = metric(rig.metrics_port, "guardstream_scorer_outcomes_total", outcome="unparseable")
    assert after - before == len(garbled)  # distinct texts, each scored once
    record_figures("14 unparseable output", verdicts, len(expected), unparseable=after - before)


def by_post(verdicts: Verdicts) -> dict[str, Decision]:
    return {
        post: Decision.from_json(next(iter(raw))) for (post, _), raw in verdicts.decisions.items()
    }


@pytest.mark.parametrize(
    "outage_s",
    [pytest.param(6.0, id="short"), pytest.param(OUTAGE_S, id="long", marks=pytest.mark.chaos)],
)
async def test_scorer_outage_backs_off_commits_nothing_and_recovers(
    rig: Rig, outage_s: float
) -> None:
    """Scenario 8: for `outage_s` every batch for the tenant fails transiently. Nothing goes
    to the DLQ, the scorer group commits nothing, retries back off to the cap and keep
    going; once the adapter reaches the scorer's registry every post is decided."""
    settings = rig.settings
    scorer = rig.scorer()
    tenant = f"late{uuid.uuid4().hex[:6]}"
    adapter_id = f"{tenant}-1"
    rig.triage_registry.register(adapter_id, rig.garble, tenant=tenant)
    rig.triage_registry.promote(adapter_id)
    # Triage keys the tenant's posts with the adapter from the generation that promoted it.
    promoted = rig.triage_registry.snapshot(fresh=True).generation
    await asyncio.to_thread(rig.triage.wait_adapter_generation, promoted)
    group = settings.group_id("scorer")
    retries_before = len(log_events(scorer, "transient failure, retrying batch"))
    batch = unique_posts(6, tenant=tenant)
    await send(settings, batch)

    deadline = asyncio.get_running_loop().time() + 120
    while len(log_events(scorer, "transient failure, retrying batch")) == retries_before:
        assert asyncio.get_running_loop().time() < deadline, scorer.log()[-3000:]
        await asyncio.sleep(0.2)
    await asyncio.sleep(outage_s)
    outage = await collect(settings)
    assert not outage.decided_posts() & {p.post_id for p in batch}
    # The failing batches commit nothing: the group's commit passed none of their requests,
    # all still pending. (Read from the requests themselves, not by comparing offsets before
    # and after: a scorer that has just joined may commit offset 0, passing nothing, when this
    # test runs first in the module.)
    audit = await audit_commits(settings, group, requests_topic(settings), outage.decided_posts())
    assert not audit.passed_undecided, audit.passed_undecided
    assert {p.post_id for p in batch} <= {post for _, _, post in audit.pending}, audit
    assert outage.dlq == []
    assert scorer.proc is not None and scorer.proc.poll() is None

    rig.scorer_registry.register(adapter_id, rig.garble, tenant=tenant)  # it arrives
    arrived = rig.scorer_registry.snapshot(fresh=True).generation
    expected = {p.post_id for p in batch}
    verdicts = await wait_for_decisions(settings, expected, timeout_s=240)
    # Decided by a scorer that serves the registry the adapter arrived in (or a later one).
    served = scorer.health()["adapter_generation"]
    assert isinstance(served, int) and served >= arrived, (served, arrived)
    # Failed batches publish nothing and are retried by the same consumer: nothing redone.
    # The rig's namespace is shared with scenario 1, whose SIGKILL re-emits some of its posts
    # once: the oracle reads every decision of the namespace, those included.
    assert_invariants(verdicts, expected, max_emissions_per_post=emission_bound(redeliveries=1))
    await drained(settings, group)

    retries = log_events(scorer, "transient failure, retrying batch")[retries_before:]
    delays = [float(e["delay_s"]) for e in retries]  # type: ignore[arg-type]
    attempts = [int(e["attempt"]) for e in retries]  # type: ignore[call-overload]
    cap = settings.process.retry_backoff_max_s
    assert max(delays) == cap and all(d <= cap for d in delays), delays  # capped, reached
    assert max(attempts) >= 4, attempts
    assert {e["error"] for e in retries} == {"TransientError"}
    retried = metric(rig.metrics_port, "guardstream_consumer_retries_total", error="TransientError")
    assert retried >= len(retries)
    record_figures(
        "8 scorer outage",
        verdicts,
        len(batch),
        outage_s=outage_s,
        retries=len(retries),
        max_attempt=max(attempts),
        max_delay_s=max(delays),
    )
