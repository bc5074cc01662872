"""The API's request telemetry (`api.telemetry`): one latency histogram per route template,
method and outcome, with the API's own buckets; the request's SERVER span continues a caller's
`traceparent` and is what the scorer client's hook sends on.

The OpenTelemetry SDK is installed once per process, so each check runs in a fresh
interpreter that installs it with in-memory readers (tests/unit/runtime/test_telemetry.py
owns this process's installation)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardstream.api.telemetry import UNMATCHED, outcome_of
from guardstream.runtime.telemetry import API_BUCKETS

pytestmark = pytest.mark.unit

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER = f"00-{TRACE_ID}-b7ad6b7169203331-01"

SCRIPT = r"""
import asyncio, sys
import httpx, orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from guardstream.api.telemetry import RequestTelemetry, inject_trace
from guardstream.runtime import telemetry
from guardstream.runtime.settings import Settings

paths, caller = orjson.loads(sys.stdin.buffer.read())
reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
telemetry.setup(Settings(telemetry={"metrics_port": 0}), "api", span_exporters=[spans],
                metric_readers=[reader])
seen = {}

async def door(scope, receive, send):  # what the scorer's door receives
    seen.update({k.decode(): v.decode() for k, v in scope["headers"]})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})

scorer = httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://door",
                           event_hooks={"request": [inject_trace]})
app = FastAPI()
app.add_middleware(RequestTelemetry)

@app.get("/v1/decisions/{post_id}")
async def decision(post_id: str) -> Response:
    return JSONResponse({"reason": "unknown_post"}, 404)

@app.post("/v1/moderate")
async def moderate() -> Response:
    await scorer.post("/v1/score", content=b"{}")
    return JSONResponse({}, 200)

@app.post("/busy")
async def busy() -> Response:
    return JSONResponse({}, 503, headers={"Retry-After": "1"})

@app.post("/limited")
async def limited() -> Response:
    return JSONResponse({}, 429)

@app.get("/boom")
async def boom() -> Response:
    raise RuntimeError("boom")

async def main():
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                               base_url="http://api")
    await client.post("/v1/moderate", headers={"traceparent": caller})
    await client.post("/busy"); await client.post("/limited"); await client.get("/boom")
    for path in paths:
        await client.get(path)

asyncio.run(main())
points = [
    {"name": m.name, "attributes": dict(p.attributes), "count": p.count,
     "bounds": list(p.explicit_bounds)}
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics for m in sm.metrics
    if m.name == "guardstream.api.request_duration" for p in m.data.data_points
]
out = {"points": points, "door_headers": seen,
       "spans": [{"name": s.name, "kind": s.kind.value, "trace": f"{s.context.trace_id:032x}",
                  "span": f"{s.context.span_id:016x}", "attributes": dict(s.attributes)}
                 for s in spans.get_finished_spans()]}
sys.stdout.write(orjson.dumps(out).decode())
"""


def run(paths: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=orjson.dumps([paths, CALLER]),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def observed() -> dict[str, Any]:
    return run(["/v1/decisions/post-secret-123", "/v1/decisions/another-7", "/no/such/9f"])


def series(observed: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    return {
        (p["attributes"]["route"], p["attributes"]["method"], p["attributes"]["outcome"]): p[
            "count"
        ]
        for p in observed["points"]
    }


def test_latency_is_recorded_per_route_template_method_and_outcome(
    observed: dict[str, Any],
) -> None:
    assert series(observed) == {
        ("/v1/moderate", "POST", "2xx"): 1,
        ("/busy", "POST", "503"): 1,
        ("/limited", "POST", "429"): 1,
        ("/boom", "GET", "5xx"): 1,  # an exception is what the client got: a 500
        # Two post ids, one series: the template, never the raw path.
        ("/v1/decisions/{post_id}", "GET", "4xx"): 2,
        (UNMATCHED, "GET", "4xx"): 1,
    }
    # The API's own buckets (one stream: the seconds view of the other histograms stays off it).
    assert all(p["bounds"] == list(API_BUCKETS) for p in observed["points"])
    assert "post-secret-123" not in orjson.dumps(observed["points"]).decode()


def test_the_request_span_continues_the_caller_and_travels_to_the_scorer(
    observed: dict[str, Any],
) -> None:
    [moderate] = [s for s in observed["spans"] if s["name"] == "POST /v1/moderate"]
    assert moderate["kind"] == 1  # SpanKind.SERVER
    assert moderate["trace"] == TRACE_ID  # the caller's trace goes on
    assert moderate["attributes"]["http.route"] == "/v1/moderate"
    assert moderate["attributes"]["http.response.status_code"] == 200
    # The scorer call carried the request span as its parent.
    sent = observed["door_headers"]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{moderate['span']}-01"
    names = {s["name"] for s in observed["spans"]}
    assert {"GET /v1/decisions/{post_id}", "GET unmatched", "POST /busy"} <= names


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        *[(200, "2xx"), (202, "2xx"), (302, "3xx"), (404, "4xx"), (413, "4xx"), (422, "4xx")],
        *[(429, "429"), (500, "5xx"), (503, "503"), (504, "5xx"), (999, "5xx")],
    ],
)
def test_outcomes_are_a_bounded_set(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


PATH_TEXT = st.text(
    alphabet=st.characters(exclude_characters="?#%/ \\", min_codepoint=33, max_codepoint=126),
    min_size=1,
    max_size=20,
)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(["/v1/decisions/", "/x/", "/"]), PATH_TEXT), max_size=8))
def test_no_path_a_client_sends_becomes_a_label(parts: list[tuple[str, str]]) -> None:
    paths = [prefix + text for prefix, text in parts]
    routes = {route for route, _, _ in series(run(paths))}
    assert routes <= {
        "/v1/moderate",
        "/busy",
        "/limited",
        "/boom",
        "/v1/decisions/{post_id}",
        UNMATCHED,
    }
