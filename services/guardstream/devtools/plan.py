"""The capacity planner: what a deployment needs for a given volume, from measured unit costs.

Every unit cost comes from a benchmark result committed under `bench/results/` and names its
file: triage CPU per post (`bench/pipeline.py`), scorer posts/s per GPU per model size and
scoring mode (`bench/scorer.py`), bytes per cached verdict, near-duplicate entry, journal
entry and review task (`bench/storage.py`), the moderation API's CPU per cache hit and per
miss (`bench/api.py`). What cannot be measured here (how long a person
takes per review, how peaky the traffic is) is an input, never a hidden constant. The
arithmetic is plain and written out in docs/operations/capacity.md; beside guardstream's plan
it prints a naive design's (no cache, no near-duplicates, plain generation, the largest model
for everything) from the same inputs and costs, and the ratio of GPUs between the two.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from guardstream.contracts.errors import PermanentError
from guardstream.contracts.topics import CATALOGUE, Topic
from guardstream.model.shapes import CONTEXT_TOKENS, kv_bytes_per_token, weight_bytes

Mode = Literal["plain", "two_phase"]
MODEL_SIZES: tuple[str, ...] = ("0.6B", "4B", "8B")
HUB_MODEL = "Qwen/Qwen3Guard-Gen-{size}"
DAY_S = 86_400
# Memory per GPU kind (NVIDIA's datasheets: H100 SXM 80 GB HBM3, H200 141 GB HBM3e). A fact of
# the hardware, not a measurement: what the engine may use of it is `gpu_memory_utilization`.
GPU_MEMORY_BYTES: dict[str, float] = {"h100": 80e9, "h200": 141e9}


class PlanError(PermanentError):
    """The inputs or the results files cannot give a plan (the message says which)."""


def default_results_dir() -> Path:
    """`bench/results/` of the checkout this package runs from."""
    return Path(__file__).resolve().parents[3] / "bench" / "results"


@dataclass(frozen=True, slots=True)
class UnitCost:
    value: float
    unit: str
    source: str  # the results file it was read from, relative to the results directory
    detail: str = ""  # which run / field of that file

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "source": self.source,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class UnitCosts:
    triage_cpu_us_per_post: UnitCost
    bytes_per_verdict: UnitCost
    bytes_per_near_entry: UnitCost
    bytes_per_journal_entry: UnitCost
    bytes_per_review_task: UnitCost  # the task row and its post text, indexes included
    # (gpu kind, model size, mode) → posts/s of one GPU
    scorer_posts_per_s: Mapping[tuple[str, str, Mode], UnitCost]
    # The API process's CPU per request (`bench/api.py`); None: no result, API not planned.
    api_cpu_us_per_hit: UnitCost | None = None
    api_cpu_us_per_miss: UnitCost | None = None

    def gpu_kinds(self) -> list[str]:
        return sorted({gpu for gpu, _, _ in self.scorer_posts_per_s})

    def scorer(self, gpu: str, size: str, mode: Mode) -> UnitCost:
        found = self.scorer_posts_per_s.get((gpu, size, mode))
        if found is None:
            measured = ", ".join(f"{g} {s} {m}" for g, s, m in sorted(self.scorer_posts_per_s))
            raise PlanError(
                f"no measured scorer throughput for {size} ({mode}) on {gpu}; measured: "
                f"{measured or 'nothing'} (bench/scorer.py writes bench/results/scorer-*)"
            )
        return found

    def every(self) -> dict[str, UnitCost]:
        named = {
            "triage_cpu_us_per_post": self.triage_cpu_us_per_post,
            "bytes_per_verdict": self.bytes_per_verdict,
            "bytes_per_near_entry": self.bytes_per_near_entry,
            "bytes_per_journal_entry": self.bytes_per_journal_entry,
            "bytes_per_review_task": self.bytes_per_review_task,
        }
        for (gpu, size, mode), cost in sorted(self.scorer_posts_per_s.items()):
            named[f"scorer_posts_per_s[{gpu},{size},{mode}]"] = cost
        if self.api_cpu_us_per_hit is not None and self.api_cpu_us_per_miss is not None:
            named["api_cpu_us_per_hit"] = self.api_cpu_us_per_hit
            named["api_cpu_us_per_miss"] = self.api_cpu_us_per_miss
        return named


def _json_lines(path: Path) -> Iterable[dict[str, Any]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value


def _gpu_kind(device: str) -> str:
    """ "NVIDIA H200" → "h200"; "NVIDIA H100 80GB HBM3" → "h100"."""
    found = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", device)
    return found.group(1).lower() if found else device.strip().lower()


def _model_size(run: Mapping[str, Any]) -> str | None:
    text = f"{run.get('weights', '')} {run.get('model', '')}"
    found = re.search(r"(0\.6B|4B|8B)", text)
    return found.group(1) if found else None


def load_costs(results: Path | None = None) -> UnitCosts:
    """The newest measured value of each unit cost in `results` (files sorted by name, which
    starts with the bench and carries the date: the last one that has a value wins)."""
    root = results or default_results_dir()
    if not root.is_dir():
        raise PlanError(f"no results directory at {root}")
    single: dict[str, UnitCost] = {}
    scorer: dict[tuple[str, str, Mode], UnitCost] = {}
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix not in {".json", ".jsonl", ".txt"}:
            continue
        name = path.name
        for run in _json_lines(path):
            kind = run.get("bench")
            if kind == "pipeline" and "triage_cpu_us_per_post" in run:
                single["triage_cpu_us_per_post"] = UnitCost(
                    float(run["triage_cpu_us_per_post"]),
                    "CPU µs per post",
                    name,
                    f"triage_cpu_us_per_post, {run.get('posts')} posts, {run.get('cpus')} cpus",
                )
            elif kind == "storage":
                for key, unit in (
                    ("bytes_per_verdict", "bytes per cached verdict"),
                    ("bytes_per_near_entry", "bytes per near-duplicate entry"),
                    ("bytes_per_journal_entry", "bytes per journal entry"),
                ):
                    single[key] = UnitCost(float(run[key]), unit, name, key)
                task = float(run["bytes_per_review_task"]) + float(
                    run["bytes_per_review_post_text"]
                )
                single["bytes_per_review_task"] = UnitCost(
                    round(task, 1),
                    "bytes per review task (task + post text)",
                    name,
                    "bytes_per_review_task + bytes_per_review_post_text",
                )
            elif kind == "api" and not run.get("quick"):  # a --quick run is a smoke test
                found = {
                    key: float(v)
                    for key in ("api_cpu_us_per_hit", "api_cpu_us_per_miss")
                    if isinstance(v := run.get(key), int | float) and math.isfinite(v) and v > 0
                }
                if len(found) == 2:
                    for key, cpu_us in found.items():
                        single[key] = UnitCost(
                            cpu_us,
                            f"API CPU µs per {key.rsplit('_', 1)[1]}",
                            name,
                            f"{key}, {run.get('machine', '?')}, load "
                            f"{run.get('load_1m_start', '?')}-{run.get('load_1m_end', '?')}",
                        )
            elif kind == "scorer":
                size = _model_size(run)
                if size is None or "device" not in run:
                    continue
                gpu = _gpu_kind(str(run["device"]))
                engine = run.get("engine", "?")
                for mode in ("plain", "two_phase"):
                    value = run.get(f"{mode}_posts_per_s")
                    if isinstance(value, int | float) and value > 0:
                        scorer[(gpu, size, mode)] = UnitCost(
                            float(value),
                            "posts/s per GPU",
                            name,
                            f"{mode}_posts_per_s, {engine} engine, "
                            f"~{run.get('prompt_tokens_mean', '?')} prompt tokens, "
                            f"{run.get('weights', run.get('model'))}",
                        )
    needed = (
        "triage_cpu_us_per_post",
        "bytes_per_verdict",
        "bytes_per_near_entry",
        "bytes_per_journal_entry",
        "bytes_per_review_task",
    )
    missing = [key for key in needed if key not in single]
    if missing:
        raise PlanError(
            f"{root} lacks {', '.join(missing)}: run bench/pipeline.py and bench/storage.py and "
            "save their last line under bench/results/"
        )
    if not scorer:
        raise PlanError(f"{root} has no scorer results (bench/scorer.py on a GPU)")
    return UnitCosts(
        triage_cpu_us_per_post=single["triage_cpu_us_per_post"],
        bytes_per_verdict=single["bytes_per_verdict"],
        bytes_per_near_entry=single["bytes_per_near_entry"],
        bytes_per_journal_entry=single["bytes_per_journal_entry"],
        bytes_per_review_task=single["bytes_per_review_task"],
        scorer_posts_per_s=scorer,
        api_cpu_us_per_hit=single.get("api_cpu_us_per_hit"),
        api_cpu_us_per_miss=single.get("api_cpu_us_per_miss"),
    )


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the buyer knows about its traffic and people; defaults are only a starting point."""

    posts_per_day: float
    peak_to_mean: float = 3.0
    duplicate_share: float = 0.30  # exact repeats of earlier content (verdict cache hits)
    near_duplicate_share: float = 0.05  # trivial variants (near-duplicate index hits)
    contested_share: float = 0.03  # of the content scored, what goes to human review
    model: str = "0.6B"  # the first tier, which sees every scored post
    escalate_to: str | None = None  # the cascade's second tier, if any
    escalation_share: float = 0.0  # of the first tier's posts, what goes on to the second
    gpu: str = "h200"
    mode: Mode = "two_phase"
    gpu_utilisation: float = 0.7  # the share of a GPU's measured throughput planned for
    triage_core_utilisation: float = 0.7  # of the one core a triage process uses
    api_share: float = 0.0  # of posts_per_day, those that come through the moderation API
    api_core_utilisation: float = 0.7  # of the one core an API process (one event loop) uses
    minutes_per_review: float = 2.0
    reviewer_occupancy: float = 0.8  # of a shift spent deciding
    shift_hours: float = 8.0
    sla_hours: float = 2.0
    cache_days: float = 7.0  # GUARDSTREAM_CACHE_TTL_S
    journal_days: float = 7.0  # GUARDSTREAM_JOURNAL_TTL_S
    review_retention_days: float = 30.0
    max_msgs_per_partition: float = 5_000.0  # the rate one partition is planned to carry
    # Redis memory over its data: fragmentation, replication and client buffers. The storage
    # bench prints the server's fragmentation ratio beside its figures as a guide.
    redis_headroom: float = 1.5
    gpu_memory_utilization: float = 0.9  # GUARDSTREAM_GPU_MEMORY_UTILIZATION (the chart's)
    engine_reserve_bytes: float = 4e9  # activations, CUDA graphs, the sampler's buffers
    post_tokens: int = 640  # a post's prompt and answer (the scorer bench's ~620 + answer)

    def check(self) -> None:
        """Every input within a range a real deployment can have (which also keeps every
        result a finite number), else a `PlanError` naming the input and its range."""
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:  # NaN fails both
                raise PlanError(f"{name} must be between {low:g} and {high:g}, not {value}")
        if self.duplicate_share + self.near_duplicate_share > 1.0:
            raise PlanError("duplicate_share + near_duplicate_share cannot exceed 1")
        for size in (self.model, self.escalate_to):
            if size is not None and size not in MODEL_SIZES:
                raise PlanError(f"model size {size!r}: one of {', '.join(MODEL_SIZES)}")
        if self.escalate_to is None and self.escalation_share > 0:
            raise PlanError("escalation_share needs escalate_to (the second tier's model)")


# The range each numeric input may take: shares are shares, utilisations leave room to run,
# volumes and durations stay within what a deployment can have.
RANGES: dict[str, tuple[float, float]] = {
    "posts_per_day": (1, 1e13),
    "peak_to_mean": (1, 1000),
    "duplicate_share": (0, 1),
    "near_duplicate_share": (0, 1),
    "contested_share": (0, 1),
    "escalation_share": (0, 1),
    "gpu_utilisation": (0.01, 1),
    "triage_core_utilisation": (0.01, 1),
    "api_share": (0, 1),
    "api_core_utilisation": (0.01, 1),
    "minutes_per_review": (0.01, 24 * 60),
    "reviewer_occupancy": (0.01, 1),
    "shift_hours": (0.5, 24),
    "sla_hours": (0.01, 24 * 365),
    "cache_days": (0, 3650),
    "journal_days": (0, 3650),
    "review_retention_days": (0, 3650),
    "max_msgs_per_partition": (1, 1e7),
    "redis_headroom": (1, 10),
    "gpu_memory_utilization": (0.05, 1),
    "engine_reserve_bytes": (0, 1e12),
    "post_tokens": (1, CONTEXT_TOKENS),
}


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """What one GPU holds for a model size: the weights, then KV cache for the rest."""

    gpu_bytes: float
    weight_bytes: float
    kv_bytes_per_token: int
    kv_tokens: int  # KV cache capacity in tokens
    max_model_len: int  # the longest context that fits (the model's own 32,768 where it can)
    full_contexts: float  # sequences of max_model_len that fit at once
    posts_in_flight: int  # sequences of a typical post (`post_tokens`) that fit at once

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu_bytes": self.gpu_bytes,
            "weight_bytes": self.weight_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_tokens": self.kv_tokens,
            "max_model_len": self.max_model_len,
            "full_contexts": round(self.full_contexts, 1),
            "posts_in_flight": self.posts_in_flight,
        }


def gpu_memory(size: str, inputs: Inputs) -> GpuMemory:
    """KV cache left on one GPU after the weights and the engine's reserve, and the longest
    context it allows: the model's full 32,768 tokens wherever one such sequence fits."""
    if inputs.gpu not in GPU_MEMORY_BYTES:
        raise PlanError(f"GPU kind {inputs.gpu!r}: memory known for {', '.join(GPU_MEMORY_BYTES)}")
    total = GPU_MEMORY_BYTES[inputs.gpu]
    weights = weight_bytes(size)
    per_token = kv_bytes_per_token(size)
    budget = total * inputs.gpu_memory_utilization - weights - inputs.engine_reserve_bytes
    if budget < per_token * 256:
        raise PlanError(
            f"{size} does not fit a {inputs.gpu}: {weights / 1e9:.1f} GB of weights and "
            f"{inputs.engine_reserve_bytes / 1e9:.1f} GB reserve in "
            f"{total * inputs.gpu_memory_utilization / 1e9:.1f} GB"
        )
    tokens = int(budget // per_token)
    max_len = CONTEXT_TOKENS
    while max_len > tokens:
        max_len //= 2
    return GpuMemory(
        gpu_bytes=total,
        weight_bytes=weights,
        kv_bytes_per_token=per_token,
        kv_tokens=tokens,
        max_model_len=max_len,
        full_contexts=tokens / max_len,
        posts_in_flight=tokens // inputs.post_tokens,
    )


@dataclass(frozen=True, slots=True)
class Tier:
    model: str
    posts_per_s: float  # at peak
    gpu_posts_per_s: UnitCost
    gpus: int
    memory: GpuMemory


@dataclass(frozen=True, slots=True)
class Plan:
    inputs: Inputs
    peak_posts_per_s: float
    scored_share: float
    triage_cores: float
    triage_replicas: int
    api_cores: float | None  # None: not planned (no `bench/api.py` result)
    api_replicas: int | None
    tiers: tuple[Tier, ...]
    gpus: int
    naive_gpus: int
    naive_tier: Tier
    contested_per_day: float
    reviewers_on_shift: int
    reviewer_headcount: int
    redis_bytes: dict[str, float]
    postgres_bytes: float
    partitions: dict[str, int]
    msgs_per_partition: dict[str, float]
    costs: UnitCosts
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_ratio(self) -> float:
        return self.naive_gpus / self.gpus if self.gpus else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": {k: getattr(self.inputs, k) for k in Inputs.__dataclass_fields__},
            "peak_posts_per_s": round(self.peak_posts_per_s, 1),
            "scored_share": round(self.scored_share, 4),
            "triage": {"cores": round(self.triage_cores, 2), "replicas": self.triage_replicas},
            "api": {
                "cores": None if self.api_cores is None else round(self.api_cores, 2),
                "replicas": self.api_replicas,
            },
            "scorer": {
                "tiers": [
                    {
                        "model": HUB_MODEL.format(size=t.model),
                        "posts_per_s": round(t.posts_per_s, 1),
                        "gpu_posts_per_s": t.gpu_posts_per_s.value,
                        "gpus": t.gpus,
                        "gpu_memory": t.memory.as_dict(),
                    }
                    for t in self.tiers
                ],
                "gpus": self.gpus,
            },
            "naive": {
                "model": HUB_MODEL.format(size=self.naive_tier.model),
                "mode": "plain",
                "posts_per_s": round(self.naive_tier.posts_per_s, 1),
                "gpus": self.naive_gpus,
            },
            "gpu_ratio_naive_over_guardstream": round(self.gpu_ratio, 2),
            "review": {
                "contested_per_day": round(self.contested_per_day),
                "reviewers_on_shift_at_peak": self.reviewers_on_shift,
                "reviewer_headcount": self.reviewer_headcount,
            },
            "redis_bytes": {k: round(v) for k, v in self.redis_bytes.items()},
            "postgres_bytes": round(self.postgres_bytes),
            "partitions": self.partitions,
            "msgs_per_partition_at_peak": {
                k: round(v, 1) for k, v in self.msgs_per_partition.items()
            },
            "unit_costs": {k: c.as_dict() for k, c in self.costs.every().items()},
            "notes": self.notes,
        }


def _tier(model: str, posts_per_s: float, cost: UnitCost, inputs: Inputs) -> Tier:
    per_gpu = cost.value * inputs.gpu_utilisation
    gpus = math.ceil(posts_per_s / per_gpu) if posts_per_s > 0 else 0
    return Tier(model, posts_per_s, cost, gpus, gpu_memory(model, inputs))


def _partitions(default: int, rate: float, consumers: int, per_partition: float) -> int:
    """At least the catalogue's count, room for twice the planned consumers (autoscaling, a
    rebalance), and no partition above the planned rate."""
    return max(default, 2 * consumers, math.ceil(rate / per_partition))


def make_plan(inputs: Inputs, costs: UnitCosts) -> Plan:
    inputs.check()
    notes: list[str] = []
    peak = inputs.posts_per_day / DAY_S * inputs.peak_to_mean
    scored_share = 1.0 - inputs.duplicate_share - inputs.near_duplicate_share
    scored = peak * scored_share

    triage_cores = peak * costs.triage_cpu_us_per_post.value / 1e6
    triage_replicas = max(1, math.ceil(triage_cores / inputs.triage_core_utilisation))

    # The API decides its hits itself and forwards its misses to the scorers (counted in the
    # GPUs below with the stream's posts): its CPU per request of each kind, per process.
    api_cores: float | None = None
    api_replicas: int | None = None
    hit_us, miss_us = costs.api_cpu_us_per_hit, costs.api_cpu_us_per_miss
    if hit_us is None or miss_us is None:
        # Said, not guessed: without a result the API's cost per request is unknown.
        notes.append(
            "moderation API replicas are not planned: no `make bench-api` result under "
            "bench/results/ (its misses are scored by the same GPUs, counted above)"
        )
    else:
        api_peak = peak * inputs.api_share
        per_post_us = (1.0 - scored_share) * hit_us.value + scored_share * miss_us.value
        api_cores = api_peak * per_post_us / 1e6
        api_replicas = (
            max(1, math.ceil(api_cores / inputs.api_core_utilisation)) if api_peak > 0 else 0
        )

    first = _tier(
        inputs.model,
        scored,
        costs.scorer(inputs.gpu, inputs.model, inputs.mode),
        inputs,
    )
    tiers = [first]
    if inputs.escalate_to is not None:
        tiers.append(
            _tier(
                inputs.escalate_to,
                scored * inputs.escalation_share,
                costs.scorer(inputs.gpu, inputs.escalate_to, inputs.mode),
                inputs,
            )
        )
    gpus = sum(t.gpus for t in tiers)
    largest = MODEL_SIZES[-1]
    naive = _tier(largest, peak, costs.scorer(inputs.gpu, largest, "plain"), inputs)

    # Human review: contested content once per content key (repeats reuse the human verdict).
    contested_per_day = inputs.posts_per_day * scored_share * inputs.contested_share
    peak_hour_items = contested_per_day / 24 * inputs.peak_to_mean
    work_hours_per_hour = peak_hour_items * inputs.minutes_per_review / 60
    reviewers_on_shift = math.ceil(work_hours_per_hour / inputs.reviewer_occupancy)
    daily_work_hours = contested_per_day * inputs.minutes_per_review / 60
    reviewer_headcount = math.ceil(
        daily_work_hours / inputs.reviewer_occupancy / inputs.shift_hours
    )
    if inputs.minutes_per_review / 60 > inputs.sla_hours:
        notes.append("one review takes longer than the SLA: every item will be late")

    unique_per_day = inputs.posts_per_day * scored_share
    redis_bytes = {
        "verdict_cache": unique_per_day * inputs.cache_days * costs.bytes_per_verdict.value,
        "near_duplicate_index": unique_per_day
        * inputs.cache_days
        * costs.bytes_per_near_entry.value,
        "decision_journal": inputs.posts_per_day
        * inputs.journal_days
        * costs.bytes_per_journal_entry.value,
    }
    redis_bytes["total_with_headroom"] = sum(redis_bytes.values()) * inputs.redis_headroom
    postgres_bytes = (
        contested_per_day * inputs.review_retention_days * costs.bytes_per_review_task.value
    )

    default = {spec.topic: spec.partitions for spec in CATALOGUE}
    rates = {
        Topic.POSTS: (peak, triage_replicas),
        Topic.SCORE_REQUESTS: (scored, first.gpus),
        Topic.REVIEW: (peak_hour_items / 3600, 1),
    }
    if len(tiers) > 1:
        rates[Topic.ESCALATIONS] = (tiers[1].posts_per_s, tiers[1].gpus)
    partitions = {
        str(topic): _partitions(default[topic], rate, consumers, inputs.max_msgs_per_partition)
        for topic, (rate, consumers) in rates.items()
    }
    per_partition = {
        str(topic): rate / partitions[str(topic)] for topic, (rate, _) in rates.items()
    }
    if partitions[str(Topic.POSTS)] > default[Topic.POSTS]:
        notes.append(
            f"posts.v1 needs {partitions[str(Topic.POSTS)]} partitions (the catalogue creates "
            f"{default[Topic.POSTS]}): create it with more before the first post"
        )
    return Plan(
        inputs=inputs,
        peak_posts_per_s=peak,
        scored_share=scored_share,
        triage_cores=triage_cores,
        triage_replicas=triage_replicas,
        api_cores=api_cores,
        api_replicas=api_replicas,
        tiers=tuple(tiers),
        gpus=gpus,
        naive_gpus=naive.gpus,
        naive_tier=naive,
        contested_per_day=contested_per_day,
        reviewers_on_shift=reviewers_on_shift,
        reviewer_headcount=reviewer_headcount,
        redis_bytes=redis_bytes,
        postgres_bytes=postgres_bytes,
        partitions=partitions,
        msgs_per_partition=per_partition,
        costs=costs,
        notes=notes,
    )


def helm_values(plan: Plan) -> dict[str, Any]:
    """A values overlay for deploy/helm/guardstream: replicas, autoscaling bounds, the first
    tier's model and the retention the plan assumed. A second cascade tier is a second
    release of the chart (its scorer reads the escalations topic): see `second_tier_values`."""
    first = plan.tiers[0]
    posts_partitions = plan.partitions[str(Topic.POSTS)]
    return {
        "model": HUB_MODEL.format(size=first.model),
        "extraEnv": [
            {"name": "GUARDSTREAM_CACHE_TTL_S", "value": str(int(plan.inputs.cache_days * DAY_S))},
            {
                "name": "GUARDSTREAM_JOURNAL_TTL_S",
                "value": str(int(plan.inputs.journal_days * DAY_S)),
            },
        ],
        "triage": {
            "replicas": plan.triage_replicas,
            "keda": {"maxReplicaCount": max(plan.triage_replicas, posts_partitions)},
            "hpa": {
                "minReplicas": plan.triage_replicas,
                "maxReplicas": max(plan.triage_replicas, posts_partitions),
            },
        },
        "scorer": {
            "replicas": max(first.gpus, 1),
            "gpus": 1,
            "gpuMemoryUtilization": str(plan.inputs.gpu_memory_utilization),
            "env": [
                {"name": "GUARDSTREAM_MAX_MODEL_LEN", "value": str(first.memory.max_model_len)}
            ],
            "keda": {
                "minReplicaCount": max(first.gpus, 1),
                "maxReplicaCount": max(first.gpus, 1),
            },
            "hpa": {"minReplicas": max(first.gpus, 1), "maxReplicas": max(first.gpus, 1)},
        },
    }


def second_tier_values(plan: Plan) -> dict[str, Any] | None:
    """The cascade's second tier as its own release's overlay (scorer only), if there is one."""
    if len(plan.tiers) < 2:
        return None
    second = plan.tiers[1]
    return {
        "model": HUB_MODEL.format(size=second.model),
        "topics": {"enabled": False},
        "triage": {"enabled": False},
        "api": {"enabled": False},
        "review": {"enabled": False},
        "feedback": {"enabled": False},
        "sla": {"enabled": False},
        "scorer": {
            "replicas": max(second.gpus, 1),
            "gpus": 1,
            "gpuMemoryUtilization": str(plan.inputs.gpu_memory_utilization),
            "env": [
                {"name": "GUARDSTREAM_SCORER_SOURCE", "value": "escalations"},
                {"name": "GUARDSTREAM_MAX_MODEL_LEN", "value": str(second.memory.max_model_len)},
            ],
        },
    }
