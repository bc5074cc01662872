"""The API's request span while no exporter is configured (`api.telemetry`): a context-only span
(`tracing.context_only_span`), nothing recorded, yet the trace goes on as with a real span: the
caller's trace id reaches the scorer's door under a span id of the API's own, and a request
without a caller's trace starts one. The latency histogram is recorded as before.

The OpenTelemetry SDK is installed once per process: the check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.unit

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

SCRIPT = r"""
import asyncio, sys
import httpx, orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from guardstream.api.telemetry import RequestTelemetry, inject_trace
from guardstream.runtime import telemetry, tracing
from guardstream.runtime.settings import Settings

caller = sys.stdin.read()
reader = InMemoryMetricReader()
telemetry.setup(Settings(telemetry={"metrics_port": 0}), "api", metric_readers=[reader])
seen, recording = [], []

async def door(scope, receive, send):
    seen.append({k.decode(): v.decode() for k, v in scope["headers"]}.get("traceparent"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})

scorer = httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://door",
                           event_hooks={"request": [inject_trace]})
app = FastAPI()
app.add_middleware(RequestTelemetry)

@app.post("/v1/moderate")
async def moderate() -> Response:
    recording.append(trace.get_current_span().is_recording())
    await scorer.post("/v1/score", content=b"{}")
    return JSONResponse({}, 200)

async def main():
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    await client.post("/v1/moderate", headers={"traceparent": caller})
    await client.post("/v1/moderate")

asyncio.run(main())
count = sum(p.count for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics for m in sm.metrics
            if m.name == "guardstream.api.request_duration" for p in m.data.data_points)
sys.stdout.write(orjson.dumps({"sent": seen, "recording": recording, "count": count,
                               "context_only": tracing.context_only_span(
                                   "x", None, trace.SpanKind.SERVER) is not None}).decode())
"""


@pytest.fixture(scope="module")
def observed() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=CALLER.encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def test_without_an_exporter_the_request_span_is_context_only(observed: dict[str, Any]) -> None:
    assert observed["context_only"] is True
    assert observed["recording"] == [False, False]
    assert observed["count"] == 2  # the latency histogram does not depend on the span


def test_the_context_only_span_continues_the_callers_trace_to_the_scorer(
    observed: dict[str, Any],
) -> None:
    continued, started = observed["sent"]
    version, trace_id, span_id, flags = continued.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")  # sampled, as the caller said
    assert span_id != CALLER_SPAN and int(span_id, 16) != 0  # the API's own span
    # No caller's trace: the request starts one (a valid, different trace id).
    _, new_trace, new_span, _ = started.split("-")
    assert new_trace != TRACE_ID and int(new_trace, 16) != 0 and int(new_span, 16) != 0
