"""The moderation API's request telemetry: a latency histogram per route and outcome, and a
SERVER span per request that the scorer's door and the published decision continue.

`RequestTelemetry` is a plain ASGI middleware (no per-request objects beyond the span: the
cache-hit path is measured against a bare endpoint). For every HTTP request it records
`guardstream.api.request_duration` (seconds; Prometheus `guardstream_api_request_duration_seconds`)
with three attributes, all bounded:

- `route`: the route's template (`/v1/decisions/{post_id}`), never the raw path; a path no
  route matched is `unmatched`;
- `method`: the HTTP method, or `other` outside the usual few;
- `outcome`: `2xx`, `3xx`, `4xx`, `5xx`, except `429` (rate limited) and `503` (busy, with
  Retry-After) on their own, the two a client is told to retry.

The span is current while the route runs: `inject_trace`, the httpx request hook of the
scorer client, puts its `traceparent` on the call to the scorer's interactive door, whose span
continues it (`runtime.jsonhttp`), and a decision the API or the scorer publishes carries it
on its Kafka headers (`runtime.tracing.output_headers`). A request that arrives with a
`traceparent` (a gateway's trace) is continued, under the process's parent-based sampler.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardstream.runtime import metrics, tracing

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_TRACE_HEADERS = (b"traceparent", b"tracestate")


def outcome_of(status: int) -> str:
    """The `outcome` attribute of a response status (a bounded set)."""
    if status in (429, 503):
        return str(status)
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


def route_of(scope: Scope) -> str:
    """The template of the route that handled `scope` (FastAPI records it there), else
    `unmatched`: a raw path would put post ids (and anything a stranger types) in labels."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def _carrier(scope: Scope) -> Mapping[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name in _TRACE_HEADERS
    }


class RequestTelemetry:
    """ASGI middleware: `app.add_middleware(RequestTelemetry)`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        method = scope.get("method", "")
        method = method if method in METHODS else "other"

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        carrier = _carrier(scope)
        parent = tracing.PROPAGATOR.extract(carrier) if carrier else None
        # No exporter: a context-only span (the same ids, nothing built nobody reads: a real
        # SDK span with its attributes was about 50 µs of every request).
        quiet = tracing.context_only_span(method, parent, SpanKind.SERVER)
        spanning = (
            trace.use_span(quiet, end_on_exit=False)
            if quiet is not None
            else tracing.tracer().start_as_current_span(
                method, context=parent, kind=SpanKind.SERVER, record_exception=False
            )
        )
        with spanning as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = route_of(scope)
                outcome = outcome_of(status)
                metrics.api_request_duration.record(
                    time.perf_counter() - started,
                    {"route": route, "method": method, "outcome": outcome},
                )
                if span.is_recording():
                    span.update_name(f"{method} {route}")
                    span.set_attributes(
                        {
                            "http.request.method": method,
                            "http.route": route,
                            "http.response.status_code": status,
                        }
                    )
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR, outcome))


async def inject_trace(request: httpx.Request) -> None:
    """httpx request hook: the current span's `traceparent` (and `tracestate`) on the call."""
    carrier: dict[str, str] = {}
    tracing.PROPAGATOR.inject(carrier, context=None)
    if carrier:
        request.headers.update(carrier)
