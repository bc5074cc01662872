"""Trace context across Kafka hops: one post is one trace, from producer to decision.

W3C `traceparent` / `tracestate` travel in record headers (`inject` / `extract`). The shared
consumer runtime (`runtime/loop.py`) opens a `BatchTrace` around each batch: a span per record,
child of the context its producer injected, and a batch span linking them. Handlers `bind` a
record to the post event it carries; `verdict/emitter.py` then injects that record's span into
every output about the same post event, so score requests and decisions continue the post's
trace. Span attributes are topic / partition / offset / group, tenant, verdict and hashed ids
only: never text, author ids or anything a user wrote.

While no exporter is configured (`runtime.telemetry` then calls `context_only_spans`), a batch's
spans are context-only: the same trace ids, span ids and sampling flags the SDK would give
them - so headers and log lines carry them as before - but no span objects, attributes or
processors, which nobody would read (a tenth or more of triage's CPU time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # instrumentation uses the API only; the SDK is `runtime.telemetry`'s
    from opentelemetry.sdk.trace import TracerProvider

Headers = list[tuple[str, bytes]]
# W3C trace context only: what Kafka headers carry must not depend on process-wide config.
PROPAGATOR = TraceContextTextMapPropagator()
TRACER_NAME = "guardstream"
MAX_LINKS = 128  # the SDK keeps at most 128 links per span anyway


class _Record(Protocol):
    """What tracing needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode("latin-1")))


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()


def inject(headers: Headers | None = None, context: Context | None = None) -> Headers:
    """Add the trace context (the current one unless `context` is given) to Kafka headers.
    Returns the list (a new one when `headers` is None); adds nothing without a valid span."""
    carrier: Headers = [] if headers is None else headers
    PROPAGATOR.inject(carrier, context=context, setter=_SETTER)
    return carrier


_EMPTY = Context()


def extract(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The trace context a producer put in these headers (an empty context when none)."""
    if not headers or not any(key == "traceparent" for key, _ in headers):
        return _EMPTY  # the common untraced case costs no parsing
    return PROPAGATOR.extract(headers, getter=_GETTER)


def hashed(value: str) -> str:
    """A stable, non-reversible stand-in for an id in span attributes (16 hex chars)."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def sdk_installed() -> bool:
    """True once a process installed a real TracerProvider (`runtime.telemetry.setup`)."""
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


# The SDK provider whose ids and sampler context-only spans take; None: real spans.
_context_only: TracerProvider | None = None


def context_only_spans(provider: TracerProvider | None) -> None:
    """Batches get context-only spans decided by `provider` (installed, exporting nowhere),
    or real spans again (None, the default). Called by `runtime.telemetry`."""
    global _context_only
    _context_only = provider


def context_only_span(name: str, parent: Context | None, kind: SpanKind) -> Span | None:
    """While no exporter is configured: the context-only span (`NonRecordingSpan`, same ids and
    sampling as the SDK's) of a span `name` under `parent`, for a caller to make current;
    None when spans are real (start one with `tracer()`)."""
    if _context_only is None:
        return None
    context = parent if parent is not None else otel_context.get_current()
    return _context_only_span(_context_only, name, context, kind)


def _context_only_span(
    provider: TracerProvider, name: str, parent: Context, kind: SpanKind
) -> Span:
    """What the SDK's `start_span` decides for a span - its ids, the sampler's verdict - as
    a `NonRecordingSpan`: propagated and logged like the real one, never exported."""
    parent_ctx = trace.get_current_span(parent).get_span_context()
    if parent_ctx.is_valid:
        trace_id = parent_ctx.trace_id
        random_id = parent_ctx.trace_flags.random_trace_id
    else:
        trace_id = provider.id_generator.generate_trace_id()
        random_id = provider.id_generator.is_trace_id_random()
    sampling = provider.sampler.should_sample(parent, trace_id, name, kind)
    sampled = sampling.decision.is_sampled()  # type: ignore[no-untyped-call]  # SDK: untyped
    flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
    if random_id:
        flags |= TraceFlags.RANDOM_TRACE_ID
    return NonRecordingSpan(
        SpanContext(
            trace_id,
            provider.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampling.trace_state,
        )
    )


def trace_id_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The 32-hex trace id these headers carry, if any (tests and tooling)."""
    ctx = trace.get_current_span(extract(headers)).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def producer_span(topic: str, **attributes: str | int) -> Iterator[Headers]:
    """A PRODUCER span for a record that starts a trace (a post); yields headers to send."""
    attrs: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        **attributes,
    }
    with tracer().start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attrs):
        yield inject()


@contextmanager
def consumer_span(record: _Record, **attributes: str | int) -> Iterator[Span]:
    """For consumers outside `runtime/loop.py` (the faust SLA app, the review console's
    consumers): a current CONSUMER span continuing the record's trace. Records produced inside
    it continue the trace too: send them with `headers=inject()`."""
    attrs: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": record.partition,
        "messaging.kafka.offset": record.offset,
        **attributes,
    }
    with tracer().start_as_current_span(
        f"process {record.topic}",
        context=extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
    ) as span:
        yield span


@contextmanager
def server_span(name: str, headers: Mapping[str, str]) -> Iterator[Span]:
    """A current SERVER span for an HTTP request (the scorer's interactive door), continuing
    the caller's trace from its `traceparent` / `tracestate` headers (lower-cased names)."""
    carrier = {k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}
    parent = PROPAGATOR.extract(carrier) if carrier else None
    with tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, record_exception=False
    ) as span:
        yield span


def set_status_code(span: Span, status: int) -> None:
    """Record an HTTP answer's status on `span` (an error from 500 on)."""
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(status)))


class BatchTrace:
    """The spans of one consumed batch: a CONSUMER span per record (child of its producer's
    context) and a batch span, current while the handler runs, linking the sampled ones.

    Per-record spans carry only what differs per record (topic, partition, offset, and what
    the outputs add); what the batch shares (system, group, service) is on the batch span.
    This is triage's hot path: see bench/telemetry.py for what it costs."""

    def __init__(self, service: str, group: str, records: Iterable[_Record]) -> None:
        self._by_record: dict[tuple[str, int, int], Span] = {}
        self._by_event: dict[str, Span] = {}
        self.batch: Span = trace.INVALID_SPAN
        if not sdk_installed():
            return  # no tracer (a test or a bench in-process): no per-record work at all
        if _context_only is not None:
            self._context_only_spans(_context_only, records)
            return
        tr = tracer()
        links: list[Link] = []
        topic = ""
        for record in records:
            topic = record.topic
            span = tr.start_span(
                f"process {topic}",
                context=extract(record.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.destination.name": topic,
                    "messaging.destination.partition.id": record.partition,
                    "messaging.kafka.offset": record.offset,
                },
            )
            self._by_record[(topic, record.partition, record.offset)] = span
            if span.is_recording() and len(links) < MAX_LINKS:
                links.append(Link(span.get_span_context()))
        self.batch = tr.start_span(
            f"process {topic} batch",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.batch.message_count": len(self._by_record),
                "messaging.consumer.group.name": group,
                "guardstream.service": service,
            },
        )

    def _context_only_spans(self, provider: TracerProvider, records: Iterable[_Record]) -> None:
        topic = ""
        for record in records:
            topic = record.topic
            self._by_record[(topic, record.partition, record.offset)] = _context_only_span(
                provider, f"process {topic}", extract(record.headers), SpanKind.CONSUMER
            )
        self.batch = _context_only_span(
            provider, f"process {topic} batch", _EMPTY, SpanKind.CONSUMER
        )

    def record_span(self, record: _Record) -> Span | None:
        return self._by_record.get((record.topic, record.partition, record.offset))

    def bind(self, record: _Record, post_event_id: str) -> None:
        span = self.record_span(record)
        if span is not None:
            self._by_event.setdefault(post_event_id, span)

    def event_span(self, post_event_id: str) -> Span | None:
        return self._by_event.get(post_event_id)

    def failed(self, error: BaseException, *, retrying: bool) -> None:
        self.batch.add_event(
            "batch failed", {"exception.type": type(error).__name__, "retrying": retrying}
        )

    def end(self, error: BaseException | None = None, *, abandoned: bool = False) -> None:
        status = Status(StatusCode.ERROR, type(error).__name__) if error is not None else None
        for span in (*self._by_record.values(), self.batch):
            if not span.is_recording():
                continue
            if abandoned:
                span.set_attribute("guardstream.abandoned", True)
            if status is not None:
                span.set_status(status)
            span.end()


_current: ContextVar[BatchTrace | None] = ContextVar("guardstream_batch_trace", default=None)


@contextmanager
def batch_scope(batch: BatchTrace) -> Iterator[BatchTrace]:
    """Make `batch` the current one (for `bind` and the outbox) and its batch span current."""
    token = _current.set(batch)
    ctx_token = otel_context.attach(trace.set_span_in_context(batch.batch))
    try:
        yield batch
    finally:
        otel_context.detach(ctx_token)
        _current.reset(token)


def bind(record: _Record, post_event_id: str) -> None:
    """Say which post event `record` carries, so outputs about it continue its trace."""
    batch = _current.get()
    if batch is not None:
        batch.bind(record, post_event_id)


def output_headers(
    post_event_id: str | None = None,
    record: _Record | None = None,
    attributes: Callable[[], Mapping[str, Any]] | None = None,
    headers: Headers | None = None,
) -> Headers:
    """`headers` (or new ones) plus the trace context for a record produced while handling a
    batch: the span of the input it derives from (by post event, else by record), annotated
    with what `attributes` gives (called only for a recording span: nobody reads the others);
    outside a batch, the current span's."""
    batch = _current.get()
    span = None
    if batch is not None:
        if post_event_id is not None:
            span = batch.event_span(post_event_id)
        if span is None and record is not None:
            span = batch.record_span(record)
    if span is None:
        return inject(headers)
    if attributes is not None and span.is_recording():
        span.set_attributes(attributes())
    return _inject_span(headers, span)


def _inject_span(headers: Headers | None, span: Span) -> Headers:
    """`inject(headers, context=<span current>)` without building a context for the
    propagator: the same W3C `traceparent` (and `tracestate` when the span has one) that
    `TraceContextTextMapPropagator.inject` writes, pinned by a unit test. Once per output on
    triage's hot path, where the propagator's way took a fifth of tracing's time."""
    carrier: Headers = [] if headers is None else headers
    ctx = span.get_span_context()
    if ctx == trace.INVALID_SPAN_CONTEXT:  # the propagator's test, exactly
        return carrier
    _SETTER.set(
        carrier, "traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    if ctx.trace_state:
        _SETTER.set(carrier, "tracestate", ctx.trace_state.to_header())
    return carrier


@contextmanager
def record_scope(record: _Record) -> Iterator[None]:
    """Make the record's span current (log lines about one record carry its trace id)."""
    batch = _current.get()
    span = batch.record_span(record) if batch is not None else None
    if span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)
