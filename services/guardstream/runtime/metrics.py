"""The pipeline's metrics, defined once, on the OpenTelemetry API.

Instruments are created on the API's global meter at import; until a process installs the SDK
(`guardstream.runtime.telemetry.setup`) they cost next to nothing and record nothing. Attributes
are low-cardinality only (process, topic, partition, tenant, verdict, source, reason, store,
model, adapter) — never post ids, author ids or text. Prometheus names: dots become
underscores, the unit is appended (`s` → `_seconds`; `1` and `{…}` add nothing) and counters
end in `_total`; e.g. `guardstream.pipeline.decisions` → `guardstream_pipeline_decisions_total`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from guardstream.contracts.events import Decision

meter = metrics.get_meter("guardstream")

# --- consumers (runtime/loop.py) ------------------------------------------------------------
consumed = meter.create_counter(
    "guardstream.consumer.records", unit="{record}", description="Records fetched and handled"
)
batch_size = meter.create_histogram(
    "guardstream.consumer.batch_size", unit="{record}", description="Records per handled batch"
)
batch_duration = meter.create_histogram(
    "guardstream.consumer.batch_duration",
    unit="s",
    description="Time from fetch to outputs acknowledged, per batch",
)
retries = meter.create_counter(
    "guardstream.consumer.retries", unit="{batch}", description="Transient batch failures retried"
)

# --- outputs, counted once acknowledged (verdict/emitter.py) ----------------------------------
decisions = meter.create_counter(
    "guardstream.pipeline.decisions",
    unit="{decision}",
    description="Decisions sent, by verdict, action, source and tenant",
)
dead_letters = meter.create_counter(
    "guardstream.dlq.records", unit="{record}", description="Records sent to the DLQ, by reason"
)

# --- Redis (runtime/redisstore.py) ----------------------------------------------------------
redis_failures = meter.create_counter(
    "guardstream.redis.failures",
    unit="{call}",
    description="Redis calls that failed or timed out (the pipeline went on without them)",
)

# --- scorer engine (scorer/metered.py) ---------------------------------------------------
scorer_latency = meter.create_histogram(
    "guardstream.scorer.latency", unit="s", description="Model call latency per scored content"
)
scorer_tokens = meter.create_histogram(
    "guardstream.scorer.tokens", unit="{token}", description="Tokens per model call, by kind"
)
scorer_failures = meter.create_counter(
    "guardstream.scorer.failures", unit="{call}", description="Model calls that raised"
)

# --- the moderation API (api/telemetry.py) ----------------------------------------------------
# Its own meter: its buckets (telemetry.API_BUCKETS) are finer than SECONDS_BUCKETS.
api_request_duration = metrics.get_meter("guardstream.api").create_histogram(
    "guardstream.api.request_duration",
    unit="s",
    description="API request latency, by route template, method and outcome (2xx, 429, 503...)",
)


class Gauges:
    """Values observed at collection time from plain snapshots the event loop keeps up to
    date. Callbacks run on the exporter's thread: they only copy dicts, never touch clients."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    def set(self, name: str, value: float, **attributes: str) -> None:
        key = tuple(sorted(attributes.items()))
        with self._lock:
            self._series.setdefault(name, {})[key] = value

    def replace_where(
        self, name: str, values: Mapping[tuple[tuple[str, str], ...], float], **match: str
    ) -> None:
        """Replace the series of `name` whose attributes include `match` by `values`
        (e.g. one consumer group's lag: partitions no longer held disappear)."""
        wanted = set(match.items())
        with self._lock:
            series = self._series.setdefault(name, {})
            for key in [k for k in series if wanted <= set(k)]:
                del series[key]
            series.update(values)

    def observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(self._series.get(name, {}).items())
            return [Observation(value, dict(key)) for key, value in items]

        return callback


gauges = Gauges()

for _name, _unit, _description in (
    ("guardstream.consumer.lag", "{record}", "Highwater minus the done watermark, per partition"),
    ("guardstream.consumer.in_flight", "{record}", "Records fetched and not yet finished"),
    ("guardstream.consumer.assigned_partitions", "{partition}", "Partitions held"),
    ("guardstream.redis.available", "1", "1 while the store's last Redis call succeeded"),
    ("guardstream.scorer.adapter_serving", "1", "1 for the model/adapter the scorer serves"),
):
    meter.create_observable_gauge(
        _name, callbacks=[gauges.observe(_name)], unit=_unit, description=_description
    )


_count_sources: dict[str, list[Mapping[str, int]]] = {}


def _observe_sources(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        totals: dict[str, int] = {}
        for counts in list(_count_sources.get(name, ())):
            for outcome, value in list(counts.items()):
                totals[outcome] = totals.get(outcome, 0) + value
        return [Observation(value, {"outcome": outcome}) for outcome, value in totals.items()]

    return callback


for _name, _description in (
    ("guardstream.triage.outcomes", "Posts handled by triage, by outcome (cache_hit, ...)"),
    ("guardstream.scorer.outcomes", "Score requests handled by the scorer, by outcome"),
):
    meter.create_observable_counter(
        _name, callbacks=[_observe_sources(_name)], unit="{record}", description=_description
    )


def observe_counts(name: str, counts: Mapping[str, int]) -> None:
    """Export a handler's running totals (`{"cache_hit": 3, ...}`) as the counter `name`
    (`guardstream.triage.outcomes` or `guardstream.scorer.outcomes`) with an `outcome`
    attribute, read at collection time; the handler keeps counting as it always did."""
    _count_sources.setdefault(name, []).append(counts)


def observe_languages(counts: Mapping[tuple[str, str], int]) -> None:
    """Export triage's running count of posts by (language, source) as
    `guardstream.triage.languages` with `lang` and `source` ("given" | "detected") attributes.
    The caller bounds the languages (triage: the detector's set, `und` and `other`)."""
    _language_sources.append(counts)


_language_sources: list[Mapping[tuple[str, str], int]] = []


def _observe_languages(_: CallbackOptions) -> Iterable[Observation]:
    totals: dict[tuple[str, str], int] = {}
    for counts in list(_language_sources):
        for key, value in list(counts.items()):
            totals[key] = totals.get(key, 0) + value
    return [
        Observation(value, {"lang": lang, "source": source})
        for (lang, source), value in totals.items()
    ]


meter.create_observable_counter(
    "guardstream.triage.languages",
    callbacks=[_observe_languages],
    unit="{post}",
    description="Posts triaged, by language (given or detected; bounded set) and its source",
)


def decision_attributes(decision: Decision, process: str) -> dict[str, str]:
    """The metric attributes of a decision (low-cardinality fields only)."""
    return {
        "verdict": str(decision.verdict),
        "action": str(decision.action),
        "source": str(decision.source),
        "tenant": decision.tenant,
        "process": process,
    }
