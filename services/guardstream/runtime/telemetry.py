"""Install the OpenTelemetry SDK in a process: metrics and traces become real here.

Code everywhere else instruments with the OpenTelemetry *API* only (`runtime/metrics.py`,
`runtime/tracing.py`, or `metrics.get_meter("guardstream")` in a feature folder). Each process
calls, once, at start:

    handle = telemetry.setup(settings, "triage")     # before it builds anything
    ...
    handle.shutdown()                                 # flushes spans and pushes metrics

What it installs, from `Settings` only:

- a MeterProvider whose metrics are served for Prometheus at `:GUARDSTREAM_METRICS_PORT/metrics`
  (0 = not served) and pushed over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
- a TracerProvider (parent-based sampling at `GUARDSTREAM_TRACE_SAMPLE_RATIO`) exporting over
  OTLP/HTTP when the endpoint is set, plus any span exporter a test passes. Trace ids exist
  even without an exporter, so log lines and Kafka headers always carry them; consumed
  batches then get context-only spans (`tracing.context_only_spans`): same ids, nothing
  built that no exporter would read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from guardstream.contracts.errors import PermanentError
from guardstream.runtime import tracing
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)


class TelemetryError(PermanentError, RuntimeError):
    """Telemetry cannot be installed as configured (e.g. the metrics port is taken)."""


# Seconds: from a cache hit (ms) to a human review (hours; the SLA is 2 h by default).
SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
    120, 300, 600, 1800, 3600, 7200, 14400,
)  # fmt: skip
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# The API's requests: sub-millisecond cache hits to the scorer's deadline (5 s by default).
API_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30,
)  # fmt: skip


def _views() -> list[View]:
    return [
        View(
            instrument_type=Histogram,
            instrument_unit="s",
            meter_name="guardstream",  # not the API's meter: one view per instrument
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        ),
        View(
            instrument_name="guardstream.scorer.tokens",
            aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS),
        ),
        View(
            instrument_name="guardstream.api.request_duration",
            aggregation=ExplicitBucketHistogramAggregation(API_BUCKETS),
        ),
        View(
            instrument_name="guardstream.consumer.batch_size",
            aggregation=ExplicitBucketHistogramAggregation(BATCH_BUCKETS),
        ),
    ]


def parse_headers(raw: str | None) -> dict[str, str]:
    """`k1=v1,k2=v2` (the OTLP headers format) → dict; malformed items are skipped."""
    out: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def resource_for(settings: Settings, service_name: str) -> Resource:
    try:
        release = version("guardstream")
    except PackageNotFoundError:
        release = "0+unknown"
    return Resource.create(
        {
            "service.name": f"guardstream-{service_name}",
            "service.namespace": "guardstream",
            "service.version": release,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            "deployment.environment": settings.telemetry.environment,
        }
    )


@dataclass
class Telemetry:
    """What `setup` installed; `shutdown()` flushes and stops it."""

    service: str
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    metrics_port: int = 0  # the port actually bound (0: not served)
    _server: WSGIServer | None = None
    _thread: threading.Thread | None = None
    _extra: list[SpanExporter] = field(default_factory=list)

    def add_span_exporter(self, exporter: SpanExporter) -> None:
        """Also send every finished span to `exporter`, synchronously (tests)."""
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._extra.append(exporter)
        tracing.context_only_spans(None)  # spans have somewhere to go now

    def shutdown(self) -> None:
        global _installed
        self.tracer_provider.force_flush()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if _installed is self:
            _installed = None
            tracing.context_only_spans(None)


_installed: Telemetry | None = None
_lock = threading.Lock()


def setup(
    settings: Settings,
    service_name: str,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """Install the SDK for this process (once: later calls return the first installation,
    with any extra `span_exporters` added)."""
    global _installed
    with _lock:
        if _installed is not None:
            for exporter in span_exporters:
                _installed.add_span_exporter(exporter)
            return _installed
        resource = resource_for(settings, service_name)
        otlp_headers = parse_headers(
            settings.telemetry.otlp_headers.get_secret_value()
            if settings.telemetry.otlp_headers
            else None
        )
        endpoint = (
            settings.telemetry.otlp_endpoint.rstrip("/")
            if settings.telemetry.otlp_endpoint
            else None
        )

        readers: list[MetricReader] = list(metric_readers)
        registry: CollectorRegistry | None = None
        if settings.telemetry.metrics_port:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            # Scope labels would only repeat "guardstream" on every series.
            readers.append(PrometheusMetricReader(scope_info_enabled=False, registry=registry))
        if endpoint:
            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", headers=otlp_headers),
                    export_interval_millis=settings.telemetry.otlp_metrics_interval_ms,
                )
            )
        meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=_views())
        metrics.set_meter_provider(meter_provider)

        tracer_provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(TraceIdRatioBased(settings.telemetry.trace_sample_ratio)),
        )
        if endpoint:
            tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=otlp_headers)
                )
            )
        trace.set_tracer_provider(tracer_provider)
        if not endpoint:  # until a span exporter is added
            tracing.context_only_spans(tracer_provider)

        handle = Telemetry(service_name, meter_provider, tracer_provider)
        for exporter in span_exporters:
            handle.add_span_exporter(exporter)
        if registry is not None:
            try:
                server, thread = start_http_server(
                    settings.telemetry.metrics_port,
                    addr=settings.process.listen_host,
                    registry=registry,
                )
            except OSError as exc:
                meter_provider.shutdown()
                tracer_provider.shutdown()
                raise TelemetryError(
                    f"cannot serve metrics on port {settings.telemetry.metrics_port} "
                    f"(GUARDSTREAM_METRICS_PORT): {exc.strerror or exc}"
                ) from exc
            handle._server, handle._thread = server, thread
            handle.metrics_port = int(server.server_address[1])
        log.info(
            "telemetry installed",
            extra={
                "service": service_name,
                "metrics_port": handle.metrics_port,
                "otlp": endpoint is not None,
                "trace_sample_ratio": settings.telemetry.trace_sample_ratio,
            },
        )
        _installed = handle
        return handle
