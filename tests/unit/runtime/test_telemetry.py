"""Trace context in Kafka headers, the consumer's per-record spans, log correlation, and the
exact names the Prometheus exporter gives OpenTelemetry instruments."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry, generate_latest

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import Source, Verdict, utcnow
from guardstream.policy import load_registry
from guardstream.runtime import metrics, telemetry, tracing
from guardstream.runtime.logs import JsonFormatter
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin, decide
from guardstream.verdict.emitter import Emitter

pytestmark = pytest.mark.unit

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


READER = InMemoryMetricReader()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process-wide SDK, installed once (OpenTelemetry's globals can be set only once)."""
    exporter = InMemorySpanExporter()
    telemetry.setup(
        Settings(telemetry={"metrics_port": 0}),
        "unit-test",
        span_exporters=[exporter],
        metric_readers=[READER],
    )
    yield exporter
    exporter.shutdown()  # later tests in this session keep the SDK, not this span store


@pytest.fixture
def finished(spans: InMemorySpanExporter) -> InMemorySpanExporter:
    spans.clear()
    return spans


def test_extract_then_inject_keeps_the_trace_and_replaces_an_old_traceparent() -> None:
    ctx = tracing.extract([("traceparent", TRACEPARENT.encode())])
    parent = trace.get_current_span(ctx).get_span_context()
    assert format(parent.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"

    headers = [("traceparent", b"00-11111111111111111111111111111111-2222222222222222-01")]
    headers.append(("gs-reason", b"kept"))
    out = tracing.inject(headers, context=ctx)
    assert out is headers
    assert [k for k, _ in out].count("traceparent") == 1
    assert ("gs-reason", b"kept") in out
    assert tracing.trace_id_of(out) == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    "span_context",
    [
        trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False),
        trace.SpanContext(
            1, 2, True, trace.TraceFlags(trace.TraceFlags.SAMPLED | 2), trace.TraceState()
        ),
        trace.SpanContext(
            0xFFFF << 100,
            0xABC,
            False,
            trace.TraceFlags(trace.TraceFlags.SAMPLED),
            trace.TraceState([("vendor", "a=1"), ("other", "b")]),
        ),
        trace.INVALID_SPAN_CONTEXT,
    ],
)
@pytest.mark.parametrize("existing", [None, [("traceparent", b"old"), ("gs-reason", b"kept")]])
def test_a_span_s_headers_are_what_the_propagator_writes(
    span_context: trace.SpanContext, existing: list[tuple[str, bytes]] | None
) -> None:
    span = trace.NonRecordingSpan(span_context)
    ours = tracing._inject_span(None if existing is None else list(existing), span)
    theirs = tracing.inject(
        None if existing is None else list(existing), context=trace.set_span_in_context(span)
    )
    assert ours == theirs


@pytest.mark.parametrize(
    "headers",
    [None, [], [("traceparent", b"garbage")], [("traceparent", b"\xff\xfe")], [("other", b"x")]],
)
def test_missing_or_malformed_trace_context_is_no_context(
    headers: list[tuple[str, bytes]] | None,
) -> None:
    assert tracing.trace_id_of(headers) is None
    assert tracing.inject(context=tracing.extract(headers)) == []


def test_outputs_continue_the_trace_of_the_record_their_post_event_came_in(
    finished: InMemorySpanExporter,
) -> None:
    traced = FakeRecord("posts.v1", 3, 41, [("traceparent", TRACEPARENT.encode())])
    untraced = FakeRecord("posts.v1", 3, 42)
    batch = tracing.BatchTrace("triage", "guardstream-triage", [traced, untraced])
    with tracing.batch_scope(batch):
        tracing.bind(traced, "event-a")
        tracing.bind(untraced, "event-b")
        a = tracing.output_headers("event-a", attributes=lambda: {"guardstream.verdict": "unsafe"})
        b = tracing.output_headers("event-b")
        dlq = tracing.output_headers(record=untraced, headers=[("gs-reason", b"bad_json")])
        unknown = tracing.output_headers("event-never-bound")
    batch.end()

    assert tracing.trace_id_of(a) == "0af7651916cd43dd8448eb211c80319c"
    # A post produced without trace context starts its own trace, distinct from the batch's.
    assert tracing.trace_id_of(b) not in (None, tracing.trace_id_of(a))
    assert tracing.trace_id_of(dlq) == tracing.trace_id_of(b)
    assert ("gs-reason", b"bad_json") in dlq
    # Unbound outputs fall back to the batch span (still a trace, never a crash).
    assert tracing.trace_id_of(unknown) is not None

    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    records = by_name["process posts.v1"]
    assert len(records) == 2
    parent = next(s for s in records if (s.attributes or {}).get("messaging.kafka.offset") == 41)
    assert parent.parent is not None and parent.parent.span_id == 0xB7AD6B7169203331
    assert parent.attributes is not None and parent.attributes["guardstream.verdict"] == "unsafe"
    assert "event-a" not in str(dict(parent.attributes))
    [batch_span] = by_name["process posts.v1 batch"]
    assert {link.context.span_id for link in batch_span.links} == {
        s.context.span_id for s in records if s.context is not None
    }


@pytest.mark.parametrize("ratio", [1.0, 0.0])
def test_without_an_exporter_batches_get_context_only_spans_with_the_same_ids(
    finished: InMemorySpanExporter, ratio: float
) -> None:
    """As a process without an exporter runs: outputs still continue the producer's trace (its
    trace id, a new span id, the sampler's flag), log lines still find one, nothing recorded."""
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    traced = FakeRecord("posts.v1", 0, 1, [("traceparent", TRACEPARENT.encode())])
    untraced = FakeRecord("posts.v1", 0, 2)
    tracing.context_only_spans(provider)
    try:
        batch = tracing.BatchTrace("triage", "guardstream-triage", [traced, untraced])
        with tracing.batch_scope(batch):
            tracing.bind(traced, "event-a")
            tracing.bind(untraced, "event-b")
            verdict = {"guardstream.verdict": "unsafe"}
            a = tracing.output_headers("event-a", attributes=lambda: verdict)
            b = tracing.output_headers("event-b")
        batch.end()
    finally:
        tracing.context_only_spans(None)

    parent_a = dict(a)["traceparent"].decode().split("-")
    assert parent_a[1] == "0af7651916cd43dd8448eb211c80319c"
    assert parent_a[2] not in ("b7ad6b7169203331", "0" * 16)
    assert parent_a[3] == "01"  # the producer sampled it: kept whatever the ratio
    parent_b = dict(b)["traceparent"].decode().split("-")
    assert parent_b[1] not in (parent_a[1], "0" * 32)  # a trace of its own
    assert int(parent_b[3], 16) & 1 == (1 if ratio == 1.0 else 0)
    assert finished.get_finished_spans() == ()


def test_outside_a_batch_bind_is_a_no_op_and_headers_follow_the_current_span(
    finished: InMemorySpanExporter,
) -> None:
    tracing.bind(FakeRecord("t", 0, 0), "e")  # no batch: nothing to do, no error
    assert tracing.output_headers("e") == []
    with tracing.producer_span("posts.v1", **{"guardstream.tenant": "acme"}) as headers:
        assert tracing.output_headers("e") == headers
    [span] = finished.get_finished_spans()
    assert span.kind is trace.SpanKind.PRODUCER
    assert format(span.context.trace_id, "032x") == tracing.trace_id_of(headers)


def test_a_consumer_span_continues_the_record_trace_for_its_outputs(
    finished: InMemorySpanExporter,
) -> None:
    record = FakeRecord(
        "moderation.actions.review.v1", 2, 9, [("traceparent", TRACEPARENT.encode())]
    )
    with tracing.consumer_span(record, **{"guardstream.tenant": "acme"}) as span:
        out = tracing.inject()
    assert tracing.trace_id_of(out) == "0af7651916cd43dd8448eb211c80319c"
    assert f"-{span.get_span_context().span_id:016x}-" in dict(out)["traceparent"].decode()
    [done] = finished.get_finished_spans()
    assert done.kind is trace.SpanKind.CONSUMER and done.parent is not None
    assert done.parent.span_id == 0xB7AD6B7169203331


def test_failed_batches_end_their_spans_with_an_error(finished: InMemorySpanExporter) -> None:
    batch = tracing.BatchTrace("scorer", "g", [FakeRecord("score-requests", 0, 7)])
    batch.failed(TimeoutError(), retrying=True)
    batch.end(RuntimeError("engine dead"))
    spans = finished.get_finished_spans()
    assert len(spans) == 2
    assert all(s.status.status_code is trace.StatusCode.ERROR for s in spans)
    assert any(e.name == "batch failed" for s in spans for e in s.events)


def test_log_lines_inside_a_span_carry_its_trace_id(spans: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("guardstream.test.correlation")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        with tracing.tracer().start_as_current_span("work") as span:
            logger.info("inside", extra={"offset": 3})
    finally:
        logger.removeHandler(handler)
    outside, inside = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert inside["offset"] == 3


def test_setup_is_installed_once(spans: InMemorySpanExporter) -> None:
    first = telemetry.setup(Settings(telemetry={"metrics_port": 0}), "other")
    assert first.service == "unit-test"
    assert isinstance(trace.get_tracer_provider(), TracerProvider)


def test_otlp_headers_parse_leniently() -> None:
    assert telemetry.parse_headers("api-key=abc, x = y ,broken,=v") == {"api-key": "abc", "x": "y"}
    assert telemetry.parse_headers(None) == {}


def test_gauge_snapshots_replace_one_groups_series_only() -> None:
    gauges = metrics.Gauges()
    lag = "guardstream.consumer.lag"
    gauges.replace_where(lag, {(("group", "a"), ("partition", "0")): 5}, group="a")
    gauges.replace_where(lag, {(("group", "b"), ("partition", "0")): 7}, group="b")
    gauges.replace_where(lag, {(("group", "a"), ("partition", "1")): 2}, group="a")
    seen = {
        (o.attributes or {}).get("partition", "") + str((o.attributes or {}).get("group")): o.value
        for o in gauges.observe(lag)(CallbackOptions())
    }
    assert seen == {"1a": 2, "0b": 7}


def test_prometheus_names_follow_the_exporter_rule() -> None:
    """The rule the dashboards and other teams rely on: dots → `_`, unit `s` → `_seconds`,
    unit `1` or `{...}` → no suffix, counters → `_total`, histograms → `_bucket/_sum/_count`."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("guardstream")
    meter.create_counter("guardstream.sla.downgrades", unit="1").add(1, {"tenant": "t"})
    meter.create_counter("guardstream.dlq.records", unit="{record}").add(2, {"reason": "r"})
    meter.create_histogram("guardstream.review.response_time", unit="s").record(3.0)
    meter.create_up_down_counter("guardstream.review.queue_depth", unit="{item}").add(4)

    def ratio(_: CallbackOptions) -> list[Observation]:
        return [Observation(0.95)]

    meter.create_observable_gauge(
        "guardstream.review.qa_agreement_ratio", callbacks=[ratio], unit="1"
    )
    meter.create_observable_gauge("guardstream.sla.oldest_pending_age", callbacks=[], unit="s")
    text = generate_latest(registry).decode()
    provider.shutdown()
    for line in (
        'guardstream_sla_downgrades_total{tenant="t"} 1.0',
        'guardstream_dlq_records_total{reason="r"} 2.0',
        'guardstream_review_response_time_seconds_bucket{le="+Inf"} 1.0',
        "guardstream_review_response_time_seconds_count 1.0",
        "guardstream_review_queue_depth 4.0",
        "guardstream_review_qa_agreement_ratio 0.95",
    ):
        assert line in text, text
    assert "otel_scope_name" not in text


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []

    def append(
        self, *, key: bytes, value: bytes, timestamp: None, headers: list[tuple[str, bytes]]
    ) -> object:
        self.records.append((key, value, headers))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """Records what is sent, batch by batch; deliveries succeed or fail as told."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(
        self, batch: FakeBatch, topic: str, partition: int
    ) -> asyncio.Future[SimpleNamespace]:
        self.sent.extend((topic, headers) for _, _, headers in batch.records)
        future: asyncio.Future[SimpleNamespace] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(ConnectionError("broker gone"))
        else:
            future.set_result(SimpleNamespace(topic=topic, partition=partition, offset=0))
        return future


def _decided(tenant: str) -> float:
    data = READER.get_metrics_data()
    total = 0.0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "guardstream.pipeline.decisions":
                    for point in metric.data.data_points:
                        if (point.attributes or {}).get("tenant") == tenant:
                            total += point.value  # type: ignore[union-attr]
    return total


async def test_outbox_decisions_continue_the_trace_and_count_once_acknowledged(
    spans: InMemorySpanExporter,
) -> None:
    pack = load_registry(None).for_post("default", None)
    verdict = CachedVerdict(
        verdict=Verdict.UNSAFE, reason="r", source=Source.MODEL, model="m", decided_at=utcnow()
    )
    decision = decide(
        verdict, Origin.MODEL, pack, post_id="p-1", post_event_id="e-1", tenant="emitter-t",
        content_key="0" * 32,
    )  # fmt: skip
    record = FakeRecord("score-requests", 0, 5, [("traceparent", TRACEPARENT.encode())])
    for fail, counted in ((True, 0.0), (False, 1.0)):
        producer = FakeProducer(fail)
        emitter = Emitter(producer, Settings(), "scorer")  # type: ignore[arg-type]
        batch = tracing.BatchTrace("scorer", "g", [record])
        with tracing.batch_scope(batch):
            tracing.bind(record, "e-1")
            await emitter.decision(decision.to_json(), decision)
            if fail:
                with pytest.raises(TransientError):
                    await emitter.flush()
            else:
                await emitter.flush()
        batch.end()
        [(topic, headers)] = producer.sent
        assert topic.endswith(f"actions.{decision.action.value}.v1")
        assert tracing.trace_id_of(headers) == "0af7651916cd43dd8448eb211c80319c"
        assert _decided("emitter-t") == counted  # a failed delivery is not a decision


async def test_outbox_counts_each_decision_of_a_flush_and_annotates_recording_spans(
    spans: InMemorySpanExporter,
) -> None:
    """Decisions are counted per attribute set in one add each; the total stays one per
    decision, and the input's span still gets the decision's attributes."""
    pack = load_registry(None).for_post("default", None)
    records = [FakeRecord("score-requests", 0, n, []) for n in range(3)]
    emitter = Emitter(FakeProducer(False), Settings(), "scorer")  # type: ignore[arg-type]
    batch = tracing.BatchTrace("scorer", "g", records)
    with tracing.batch_scope(batch):
        for n, (record, verdict) in enumerate(
            zip(records, (Verdict.SAFE, Verdict.SAFE, Verdict.UNSAFE), strict=True)
        ):
            tracing.bind(record, f"tally-{n}")
            entry = CachedVerdict(
                verdict=verdict, reason="r", source=Source.MODEL, model="m", decided_at=utcnow()
            )
            decision = decide(
                entry, Origin.MODEL, pack, post_id=f"p-{n}", post_event_id=f"tally-{n}",
                tenant="tally-t", content_key="0" * 32,
            )  # fmt: skip
            await emitter.decision(decision.to_json(), decision)
        await emitter.flush()
    batch.end()
    assert _decided("tally-t") == 3.0
    verdicts = sorted(
        str(s.attributes.get("guardstream.verdict"))
        for s in spans.get_finished_spans()
        if s.attributes and s.attributes.get("guardstream.tenant") == "tally-t"
    )
    assert verdicts == ["safe", "safe", "unsafe"]
