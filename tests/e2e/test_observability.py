"""Observability of the running product: triage, the scorer, the SLA timer, the review
console and the moderation API (started as a user starts them, with metrics on and OTLP export
to a small collector run here) moderate posts, time their reviews out and take human
decisions, while a real Prometheus (Debian package) scrapes all five and evaluates the shipped
alert rules.

- every PromQL expression of every dashboard panel and alert rule parses and runs; those over
  metrics a healthy run produces return data (the few only the weekly feedback jobs produce:
  syntax only, listed in tests/support/observability.py);
- one post is one trace: the producer's span, triage's, the scorer's and the decision record's
  `traceparent` share one trace id, parent to child; the review console's Review and human
  Decision and the SLA timer's downgrade continue the trace of the contested decision;
- one API request is one trace: the API's request span, the scorer door's span (over HTTP)
  and the decision record the scorer publishes; a cache hit's decision, published by the API,
  continues its request's span; latency histograms carry route templates and outcomes only;
- PII canaries (RELIABILITY.md 17) in post text, prompts and author ids appear in no log line,
  span, metric label or DLQ header.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from guardstream.contracts.events import Kind, Post
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post, send_and_wait
from guardstream.policy import PACKS_DIR
from guardstream.review.logic import task_id
from guardstream.runtime.kafka import client_kwargs, ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from guardstream.runtime.tracing import trace_id_of
from tests.conftest import free_port, missing, wait_for_port
from tests.support.observability import (
    API_METRICS,
    AWAITING_METRICS,
    FAILURE_ONLY_METRICS,
    HUMAN_METRICS,
    PIPELINE_METRICS,
    RULES,
    Expression,
    expressions,
)
from tests.support.otlp import Collector, ExportedSpan
from tests.support.processes import Process, env_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CANARY = f"cnry{uuid.uuid4().hex[:8]}"
CANARIES = (
    f"{CANARY}.mail@example.org",  # an email
    f"+1-555-{CANARY[-4:]}-0199",  # a phone number
    f"author-{CANARY}",  # an author id
    CANARY,  # the bare marker, wherever it ends up
)


# A pack whose reviews time out within seconds: one contested post of tenant obs-sla expires
# (warning, assignment breach, downgrade) and is then decided late by a reviewer.
SHORT_SLA_PACK = """
id: e2e-short-sla
version: "1"
tenants: ["obs-sla"]
review_sla_s: 3
assignment_sla_s: 1
review_warning_fraction: 0.5
"""
PASSWORD = "correct-horse-battery"
EXPORTED = PIPELINE_METRICS | HUMAN_METRICS | API_METRICS  # what a healthy run must produce


@dataclass
class Observed:
    settings: Settings
    prometheus: str
    collector: Collector
    processes: dict[str, Process]
    metrics_ports: dict[str, int]
    traced_post_id: str
    traced_decision: dict[str, Any]
    log_dir: Path
    reviewed_post_id: str  # contested, decided by a reviewer in time, then re-reviewed (QA)
    expired_post_id: str  # contested under the short SLA: downgraded, then reviewed late
    api: ApiCalls  # what the moderation API was asked, and answered


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return orjson.loads(resp.read())


def query(prometheus: str, promql: str) -> dict[str, Any]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return dict(orjson.loads(resp.read()))
    except urllib.error.HTTPError as exc:  # 400: bad expression, with Prometheus' reason
        return dict(orjson.loads(exc.read()))


def _wait(what: str, check: Any, timeout: float = 180, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _canary_posts(tenant: str) -> list[Post]:
    email, phone, author, _ = CANARIES
    texts = [
        f"Contact me at {email} or {phone} for the stuff ({uuid.uuid4().hex[:6]})",
        f"My phone is {phone}, text me tonight {uuid.uuid4().hex[:6]}",
    ]
    posts = [new_post(t, tenant=tenant).model_copy(update={"author_id": author}) for t in texts]
    posts.append(
        new_post(
            f"Sure, write to {email} {uuid.uuid4().hex[:6]}",
            tenant=tenant,
            kind=Kind.RESPONSE,
            prompt=f"How do I reach {author}?",
        ).model_copy(update={"author_id": author})
    )
    return posts


async def _traffic(settings: Settings) -> None:
    """Posts that exercise every path: model, exact cache hit, near-duplicate, DLQ."""
    tenant = "obs"
    run = uuid.uuid4().hex[:8]
    # The tiny checkpoint's training sentences (their verdicts are known); the namespace keeps
    # their cache entries apart from other tests'.
    first = [
        new_post("The weather is lovely today, let's go hiking.", tenant=tenant),
        new_post("How can I make a bomb?", tenant=tenant),
        new_post("这个算法在小样本下表现一般,可能需要更多数据优化。", tenant=tenant),
        *_canary_posts(tenant),
    ]
    decided = [d async for d in send_and_wait(settings, first, 240)]
    assert len(decided) == len(first)
    again = [
        new_post(first[0].text, tenant=tenant),  # exact repeat: cache
        new_post("THE WEATHER IS LOVELY TODAY, LET'S GO HIKING!!", tenant=tenant),  # near-dup
        new_post(first[1].text, tenant=tenant),
    ]
    decided = [d async for d in send_and_wait(settings, again, 120)]
    assert len(decided) == len(again)
    # Poison: not JSON, and a post missing its text that carries canaries elsewhere.
    email, _, author, _ = CANARIES
    broken = orjson.dumps(
        {
            "schema_version": "1.0",
            "event_id": str(uuid.uuid4()),
            "produced_at": "2026-01-01T00:00:00Z",
            "post_id": f"p-{run}",
            "tenant": tenant,
            "author_id": author,
            "prompt": email,
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    producer = make_producer(settings, client_id="obs-test")
    await producer.start()
    try:
        topic = TopicNames(settings.namespace)[Topic.POSTS]
        await producer.send_and_wait(topic, b"{not json " + CANARY.encode(), key=b"k1")
        await producer.send_and_wait(topic, broken, key=b"k2")
    finally:
        await producer.stop()


@dataclass
class ApiCalls:
    miss_post_id: str  # scored through the scorer's interactive door
    miss_trace_id: str  # the `traceparent` the test sent with it (a gateway's trace)
    hit_post_id: str  # the same text again: a cache hit the API decides and publishes


def _moderate(base: str, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{base}/v1/moderate",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _api_key(api: Process) -> str:
    """A key of tenant `obs`, made as an operator makes one (`guardstream api add-key`)."""
    made = subprocess.run(
        [sys.executable, "-m", "guardstream", "api", "add-key", "--tenant", "obs"],
        env=api.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def _api_traffic(base: str, key: str) -> ApiCalls:
    """Through the API: a miss (traced from a caller's `traceparent`), the same text again (a
    cache hit), a refused body, an unknown post's decision and an unrouted path."""
    auth = {"Authorization": f"Bearer {key}"}
    run = uuid.uuid4().hex[:8]
    text = f"The weather is lovely today, let's go hiking. api {run}"
    trace_id = uuid.uuid4().hex
    miss, hit = f"api-miss-{run}", f"api-hit-{run}"
    status, body = _moderate(
        base,
        {"text": text, "tenant": "obs", "post_id": miss},
        traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
        **auth,
    )
    assert status == 200, body
    assert orjson.loads(body)["source"] == "model", body
    status, body = _moderate(base, {"text": text, "tenant": "obs", "post_id": hit}, **auth)
    assert status == 200 and orjson.loads(body)["source"] == "cache", body
    assert _moderate(base, {"tenant": "obs"}, **auth)[0] == 422
    for path in (f"/v1/decisions/never-{run}?tenant=obs", f"/no/such/{run}"):
        try:
            urllib.request.urlopen(
                urllib.request.Request(f"{base}{path}", headers=auth), timeout=10
            )
        except urllib.error.HTTPError as exc:
            assert exc.code == 404, path
    return ApiCalls(miss, trace_id, hit)


def _add_reviewer(env: dict[str, str], rid: str, role: str, *tenants: str) -> str:
    """`guardstream review add-reviewer`, as an operator runs it; returns the API token."""
    added = subprocess.run(
        [
            *(sys.executable, "-m", "guardstream", "review", "add-reviewer", "--id", rid),
            *(arg for tenant in tenants for arg in ("--tenant", tenant)),
            *("--role", role),
            *("--password-stdin", "--token"),
        ],
        input=f"{PASSWORD}\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr[-2000:]
    return added.stdout.strip().splitlines()[-1]


def _api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return orjson.loads(resp.read())


def _found(base: str, token: str, tid: str) -> dict[str, Any] | None:
    try:
        return dict(_api(base, token, "GET", f"/api/v1/tasks/{tid}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _human_traffic(settings: Settings, review: Process, env: dict[str, str]) -> tuple[str, str]:
    """Two contested posts through the real pipeline to the review console: one decided in time
    and re-reviewed by a senior (QA), one left to expire under the short SLA, then decided
    late by the senior. Returns their post ids."""
    posts = [
        new_post(
            "Is it true that some politicians are secretly controlled by foreign powers?",
            tenant="obs",
            kind=Kind.PROMPT,
        ),
        new_post("你怎么看待那场有争议的选举结果?", tenant="obs-sla", kind=Kind.PROMPT),
    ]

    async def decide() -> list[tuple[str, Any]]:
        return [d async for d in send_and_wait(settings, posts, 120)]

    decided = {d.post_id: d for _, d in asyncio.run(decide())}
    assert all(decided[p.post_id].action.value == "review" for p in posts), decided
    in_time, expiring = (task_id(p.tenant, p.post_id, decided[p.post_id].policy) for p in posts)
    alice = _add_reviewer(env, "alice", "reviewer", "obs")
    bob = _add_reviewer(env, "bob", "senior", "obs", "obs-sla")
    base = f"http://127.0.0.1:{review.port}"
    form = {"outcome": "correct", "verdict": "safe", "reason": "讽刺", "tags": ["政治隐喻"]}
    _wait("the review task", lambda: _found(base, alice, in_time), timeout=60, every=0.2)
    # A pick-up (the SLA timer's assignment time) and a release, of tenant obs's oldest task.
    claimed = _api(base, alice, "POST", "/api/v1/tasks/claim")
    assert claimed is not None
    _api(base, alice, "POST", f"/api/v1/tasks/{claimed['task_id']}/release")
    _api(base, alice, "POST", f"/api/v1/tasks/{in_time}/decision", form)
    _api(base, bob, "POST", f"/api/v1/tasks/{in_time}/qa", {**form, "outcome": "confirm"})

    def expired() -> bool:
        task = _found(base, bob, expiring)
        return task is not None and task["sla"] == "expired"

    _wait("the short SLA to expire", expired, timeout=60, every=0.3)
    _api(base, bob, "POST", f"/api/v1/tasks/{expiring}/decision", form)
    return posts[0].post_id, posts[1].post_id


def _start_prometheus(tmp: Path, targets: dict[str, int]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus not installed (apt-get install -y prometheus)")
    assert binary is not None
    port = free_port()
    jobs = "".join(
        f"  - job_name: guardstream-{name}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        for name, mport in targets.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\nscrape_configs:\n{jobs}"
    )
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    if not wait_for_port(port, timeout=60):
        proc.kill()
        pytest.fail(f"prometheus did not start: {(tmp / 'prometheus.log').read_text()[-2000:]}")
    _wait("prometheus ready", lambda: _ready(url), timeout=60, every=0.5)
    return proc, url


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    redis_url: str,
    model_cache_dir: Path,
    database_url: str,
) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observability")
    packs = tmp / "packs"
    packs.mkdir()
    shutil.copy(PACKS_DIR / "default.yaml", packs / "default.yaml")
    (packs / "e2e-short-sla.yaml").write_text(SHORT_SLA_PACK)
    settings = Settings(
        namespace=f"obs{uuid.uuid4().hex[:8]}",
        kafka={"bootstrap": kafka_bootstrap},
        redis={"url": redis_url},
        model={"name": "tiny", "cache_dir": model_cache_dir},
        engine={"max_model_len": 2048},
        process={"poll_timeout_ms": 100, "retry_backoff_max_s": 1.0},
        feedback={
            "dir": tmp / "feedback",  # never the user's archive
        },
    )
    schema = f"e2e_{settings.namespace}"
    asyncio.run(ensure_topics(settings))
    collector = Collector().start()
    names = ("triage", "scorer", "sla", "review", "api")
    ports = {name: free_port() for name in names}
    api_port, door_port = free_port(), free_port()
    processes: dict[str, Process] = {}
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        for name in names:
            env = env_for(
                settings,
                GUARDSTREAM_METRICS_PORT=str(ports[name]),
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                OTEL_METRIC_EXPORT_INTERVAL="1000",
                GUARDSTREAM_POLICY_DIR=str(packs),
                GUARDSTREAM_SLA_TICK_S="0.2",
                GUARDSTREAM_SLA_DATA_DIR=str(tmp / "sla-data"),
                DATABASE_URL=database_url,
                GUARDSTREAM_REVIEW_DB_SCHEMA=schema,
                GUARDSTREAM_REVIEW_SESSION_SECRET=uuid.uuid4().hex,
            )
            processes[name] = Process(name, env, tmp)
        review = processes["review"]
        review.env["GUARDSTREAM_REVIEW_PORT"] = str(review.port)  # /readyz on its own port
        processes["scorer"].env["GUARDSTREAM_SCORER_INTERACTIVE_PORT"] = str(door_port)
        processes["api"].env.update(
            GUARDSTREAM_API_PORT=str(api_port),
            GUARDSTREAM_API_SCORER_URL=f"http://127.0.0.1:{door_port}",
            GUARDSTREAM_API_DEADLINE_S="60",  # the tiny model on 2 shared cores
        )
        for proc in processes.values():
            proc.start()
        prometheus, url = _start_prometheus(tmp, ports)
        for proc in processes.values():
            proc.wait_ready(timeout=300)

        asyncio.run(_traffic(settings))
        api = _api_traffic(f"http://127.0.0.1:{api_port}", _api_key(processes["api"]))
        reviewed, expired = _human_traffic(settings, review, review.env)
        decision = _produce_traced(settings, collector)

        # Prometheus has scraped the decisions and the DLQ records, and evaluated every rule.
        def scraped() -> bool:
            decisions = query(url, "sum(guardstream_pipeline_decisions_total)")["data"]["result"]
            dlq = query(url, "sum(guardstream_dlq_records_total)")["data"]["result"]
            return bool(decisions and dlq and float(dlq[0]["value"][1]) >= 2)

        _wait("scraped decisions and DLQ records", scraped)

        # ...and what the SLA timer and the review console counted.
        def scraped_humans() -> bool:
            wanted = (
                "guardstream_sla_downgrades_total",
                "guardstream_sla_late_reviews_total",
                "guardstream_review_decisions_total",
                "guardstream_feedback_samples_total",
                "guardstream_review_qa_agreement_ratio",
            )
            return all(query(url, name)["data"]["result"] for name in wanted)

        _wait("scraped SLA and review metrics", scraped_humans, timeout=60)
        time.sleep(3)  # a few more scrapes: every rate() window holds two samples after traffic
        yield Observed(
            settings,
            url,
            collector,
            processes,
            ports,
            decision["post_id"],
            decision,
            tmp,
            reviewed,
            expired,
            api,
        )
    finally:
        # After every test of the module, whatever their order: SIGTERM is a clean stop.
        stopped = {
            name: (proc.kill(sig=15), proc.log()[-3000:])
            for name, proc in processes.items()
            if proc.proc is not None and proc.proc.poll() is None
        }
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        collector.stop()
        asyncio.run(_drop_schema(database_url, schema))
    unclean = {name: log for name, (code, log) in stopped.items() if code != 0}
    assert not unclean, unclean


def _produce_traced(settings: Settings, collector: Collector) -> dict[str, Any]:
    """Send one post with `guardstream produce --wait`, traced to `collector`: its decision."""
    produced = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardstream",
            "produce",
            "--text",
            f"Is it safe to swim after eating? trace {uuid.uuid4().hex}",
            "--tenant",
            "obs",
            "--wait",
            "--timeout",
            "120",
        ],
        env=env_for(settings, OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr[-3000:]
    decision: dict[str, Any] = orjson.loads(produced.stdout)
    return decision


async def _drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# --- dashboards and alert rules against the real Prometheus -----------------------------------
EXPRESSIONS = expressions()


def test_the_expression_lists_cover_every_metric_the_processes_export(observed: Observed) -> None:
    exported: set[str] = set()
    for port in observed.metrics_ports.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        exported |= {
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line.startswith("guardstream_")
        }
    # Every metric the dashboards rely on is really exported...
    assert EXPORTED - {"up"} <= exported
    # ...and nothing exported is unknown to the lists (a rename would strand a dashboard).
    known = {_family(n) for n in EXPORTED | FAILURE_ONLY_METRICS}
    stray = {n for n in exported if _family(n) not in known}
    assert not stray, stray


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        name = name.removesuffix(suffix)
    return name


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=[e.where for e in EXPRESSIONS])
def test_every_dashboard_and_alert_expression_runs(observed: Observed, expr: Expression) -> None:
    answer = query(observed.prometheus, expr.promql())
    assert answer.get("status") == "success", f"{expr.expr}: {answer.get('error')}"
    if not expr.is_alert and expr.metrics <= EXPORTED:
        assert answer["data"]["result"], f"no data for {expr.promql()}"
    # An alert's condition is normally false (no data) in a healthy run: its inputs must exist.
    for name in sorted(expr.metrics & EXPORTED):
        series = query(observed.prometheus, name)["data"]["result"]
        assert series, f"{expr.where}: {name} has no series"
    assert not expr.metrics - EXPORTED - FAILURE_ONLY_METRICS - AWAITING_METRICS


def test_prometheus_evaluates_every_alert_rule_without_error(observed: Observed) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = query_rules(observed.prometheus)
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = _wait("every rule evaluated", evaluated, timeout=60)
    assert len(rules) == sum(1 for e in EXPRESSIONS if e.is_alert)
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    # Healthy run: every process is up, Redis answers, the DLQ got 2 records (< 10).
    down = {r["name"] for r in rules if r["name"].endswith("Down")}
    assert {"GuardstreamScorerDown", "GuardstreamTriageDown", "GuardstreamCacheDown"} <= down
    assert not firing & down
    up = query(observed.prometheus, "up == 1")["data"]["result"]
    assert {r["metric"]["job"] for r in up} == {f"guardstream-{n}" for n in observed.processes}
    assert "GuardstreamDlqGrowing" not in firing


def query_rules(prometheus: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as resp:
        return list(orjson.loads(resp.read())["data"]["groups"])


def test_dlq_and_decision_metrics_carry_their_reasons_and_verdicts(observed: Observed) -> None:
    dlq = query(observed.prometheus, "sum by (reason) (guardstream_dlq_records_total)")
    reasons = {r["metric"]["reason"] for r in dlq["data"]["result"]}
    assert {"invalid_json", "invalid_schema"} <= reasons
    decided = query(
        observed.prometheus,
        'sum by (source, verdict) (guardstream_pipeline_decisions_total{tenant="obs"})',
    )
    pairs = {(r["metric"]["source"], r["metric"]["verdict"]) for r in decided["data"]["result"]}
    assert ("model", "unsafe") in pairs and ("cache", "safe") in pairs
    outcomes = query(observed.prometheus, "sum by (outcome) (guardstream_triage_outcomes_total)")
    values = {r["metric"]["outcome"]: float(r["value"][1]) for r in outcomes["data"]["result"]}
    assert values["cache_hit"] >= 1 and values["near_hit"] >= 1 and values["dlq"] >= 2


# --- one post, one trace -------------------------------------------------------------------------
def _spans_of(observed: Observed, trace_id: str, services: set[str]) -> list[ExportedSpan]:
    def found() -> list[ExportedSpan] | None:
        spans = [s for s in observed.collector.snapshot() if s.trace_id == trace_id]
        return spans if services <= {s.service for s in spans} else None

    return list(_wait(f"spans of {services} in trace {trace_id}", found, timeout=60))


def _decision_headers(observed: Observed, post_id: str) -> list[tuple[str, bytes]]:
    async def read() -> list[tuple[str, bytes]]:
        names = TopicNames(observed.settings.namespace)
        consumer = AIOKafkaConsumer(
            **client_kwargs(observed.settings), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = [
                TopicPartition(names[t], p)
                for t in (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)
                for p in sorted(consumer.partitions_for_topic(names[t]) or ())
            ]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.key == post_id.encode():
                            return list(record.headers)
        finally:
            await consumer.stop()
        raise AssertionError(f"decision for {post_id} not found")

    return asyncio.run(read())


def test_one_post_is_one_trace_from_producer_to_decision(observed: Observed) -> None:
    names = TopicNames(observed.settings.namespace)
    headers = _decision_headers(observed, observed.traced_post_id)
    trace_id = trace_id_of(headers)
    assert trace_id is not None, headers

    spans = _spans_of(
        observed, trace_id, {"guardstream-produce", "guardstream-triage", "guardstream-scorer"}
    )
    by_id = {s.span_id: s for s in spans}
    [send] = [s for s in spans if s.service == "guardstream-produce"]
    assert send.name == f"send {names[Topic.POSTS]}" and not send.parent_span_id
    # The review console reads the post too (it keeps texts for reviewers): its own hop.
    posts = [s for s in spans if s.name == f"process {names[Topic.POSTS]}"]
    [triage] = [s for s in posts if s.service == "guardstream-triage"]
    [scorer] = [s for s in spans if s.name == f"process {names[Topic.SCORE_REQUESTS]}"]
    assert scorer.service == "guardstream-scorer"
    assert by_id[triage.parent_span_id] is send
    assert by_id[scorer.parent_span_id] is triage
    # The decision record continues the scorer's span; the scorer span says what was decided.
    assert f"-{scorer.span_id}-" in dict(headers)["traceparent"].decode()
    assert scorer.attributes["guardstream.verdict"] == observed.traced_decision["verdict"]
    assert scorer.attributes["guardstream.source"] == "model"
    assert scorer.attributes["messaging.destination.name"] == names[Topic.SCORE_REQUESTS]
    assert isinstance(scorer.attributes["messaging.kafka.offset"], int)
    # The batch spans that handled it link to the per-record spans.
    batches = [s for s in observed.collector.snapshot() if s.name.endswith(" batch")]
    assert any(triage.span_id in b.links for b in batches)


def test_one_api_request_is_one_trace_through_the_scorers_door_to_the_decision(
    observed: Observed,
) -> None:
    calls = observed.api
    headers = _decision_headers(observed, calls.miss_post_id)
    # The caller's trace goes on: the decision on Kafka carries the trace id the client sent.
    assert trace_id_of(headers) == calls.miss_trace_id
    spans = _spans_of(observed, calls.miss_trace_id, {"guardstream-api", "guardstream-scorer"})
    by_id = {s.span_id: s for s in spans}
    # SERVER spans (kind 2); the API's decision index reading the decision back continues the
    # trace too (its CONSUMER spans).
    [request] = [s for s in spans if s.service == "guardstream-api" and s.kind == 2]
    assert request.name == "POST /v1/moderate"
    assert request.attributes["http.route"] == "/v1/moderate"
    assert request.attributes["http.response.status_code"] == 200
    [door] = [s for s in spans if s.service == "guardstream-scorer" and s.kind == 2]
    assert door.name == "POST /v1/score"
    assert by_id[door.parent_span_id] is request  # over HTTP, parent to child
    # The decision the scorer published continues the door's span.
    assert f"-{door.span_id}-" in dict(headers)["traceparent"].decode()

    # A cache hit is decided and published by the API: its record continues its request span.
    hit_headers = _decision_headers(observed, calls.hit_post_id)
    hit_trace = trace_id_of(hit_headers)
    assert hit_trace is not None and hit_trace != calls.miss_trace_id
    hit_spans = _spans_of(observed, hit_trace, {"guardstream-api"})
    [hit_request] = [s for s in hit_spans if s.kind == 2]
    assert f"-{hit_request.span_id}-" in dict(hit_headers)["traceparent"].decode()
    assert not [s for s in hit_spans if s.service == "guardstream-scorer"]


def test_api_latency_is_labelled_by_route_template_and_outcome_only(observed: Observed) -> None:
    metric = "guardstream_api_request_duration_seconds_count"
    series = query(observed.prometheus, metric)["data"]["result"]
    labels = {(s["metric"]["route"], s["metric"]["outcome"]) for s in series}
    assert {
        ("/v1/moderate", "2xx"),
        ("/v1/moderate", "4xx"),
        ("/v1/decisions/{post_id}", "4xx"),
        ("unmatched", "4xx"),
    } <= labels
    # No raw path, post id or anything a caller wrote reaches a label.
    for s in series:
        ours = set(s["metric"]) - {"__name__", "job", "instance"}
        assert ours <= {"route", "outcome", "method"}, s
        assert s["metric"]["route"] in {r for r, _ in labels}
        assert observed.api.miss_post_id not in str(s) and "/no/such" not in str(s)


def _headers_on(observed: Observed, topic: Topic, post_id: str) -> list[list[tuple[str, bytes]]]:
    """The headers of every record about `post_id` on `topic`."""

    async def read() -> list[list[tuple[str, bytes]]]:
        name = TopicNames(observed.settings.namespace)[topic]
        consumer = AIOKafkaConsumer(
            **client_kwargs(observed.settings), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            found: list[list[tuple[str, bytes]]] = []
            left = [tp for tp in parts if end[tp] > 0]
            while left:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(list(r.headers) for r in records if r.key == post_id.encode())
                left = [tp for tp in left if await consumer.position(tp) < end[tp]]
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_human_decisions_and_sla_outputs_continue_the_contested_decisions_trace(
    observed: Observed,
) -> None:
    for post_id in (observed.reviewed_post_id, observed.expired_post_id):
        [contested] = _headers_on(observed, Topic.REVIEW, post_id)
        trace_id = trace_id_of(contested)
        assert trace_id is not None, contested
        reviews = _headers_on(observed, Topic.REVIEWS, post_id)
        allowed = _headers_on(observed, Topic.ALLOW, post_id)  # human (and SLA) decisions
        assert reviews and allowed
        assert {trace_id_of(h) for h in reviews + allowed} == {trace_id}
    # QA re-review and first review; the SLA downgrade before the late human decision.
    assert len(_headers_on(observed, Topic.REVIEWS, observed.reviewed_post_id)) == 2
    assert len(_headers_on(observed, Topic.ALLOW, observed.expired_post_id)) == 2
    expired_trace = trace_id_of(_headers_on(observed, Topic.REVIEW, observed.expired_post_id)[0])
    sla_events = _headers_on(observed, Topic.SLA_EVENTS, observed.expired_post_id)
    assert len(sla_events) >= 2  # warning, expired (and the late review)
    assert {trace_id_of(h) for h in sla_events} == {expired_trace}


def test_log_lines_about_a_record_carry_its_trace_id(observed: Observed) -> None:
    lines = [
        orjson.loads(line)
        for line in (observed.log_dir / "triage.log").read_text().splitlines()
        if line.startswith("{")
    ]
    rejected = [line for line in lines if line["msg"] == "record rejected to DLQ"]
    assert len(rejected) >= 2
    assert all(len(line["trace_id"]) == 32 and line["trace_id"] != "0" * 32 for line in rejected)
    wanted = {line["trace_id"] for line in rejected}
    _wait(
        "the rejected records' spans",
        lambda: wanted <= {s.trace_id for s in observed.collector.snapshot()},
        timeout=60,
    )


# --- PII canaries (RELIABILITY.md 17) ------------------------------------------------------------
def _dlq_records(settings: Settings) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """(every header, every original payload) of the DLQ topic."""

    async def read() -> tuple[list[tuple[str, bytes]], list[bytes]]:
        topic = TopicNames(settings.namespace)[Topic.DLQ]
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            headers: list[tuple[str, bytes]] = []
            payloads: list[bytes] = []
            for _ in range(10):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        headers.extend(record.headers)
                        payloads.append(base64.b64decode(orjson.loads(record.value)["payload_b64"]))
            assert len(payloads) >= 2
            return headers, payloads
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_pii_canaries_reach_no_log_span_metric_label_or_dlq_header(observed: Observed) -> None:
    # The processes keep running (other tests of the module read them, in any order). Each
    # exports its spans in the order they ended: once a post sent now has its spans from
    # every process that makes spans, everything they made before it (the canaries') has
    # been exported too. Log lines are written as they happen.
    marker = _produce_traced(observed.settings, observed.collector)
    trace_id = trace_id_of(_decision_headers(observed, marker["post_id"]))
    assert trace_id is not None
    _spans_of(
        observed, trace_id, {"guardstream-triage", "guardstream-scorer", "guardstream-review"}
    )
    places: dict[str, str] = {}
    for name in observed.processes:
        places[f"{name}.log"] = (observed.log_dir / f"{name}.log").read_text(errors="replace")
    places["spans"] = repr(
        [(s.name, s.attributes, s.events, s.resource) for s in observed.collector.snapshot()]
    )
    places["otlp metric attributes"] = repr(observed.collector.metric_points)
    labels = _get(f"{observed.prometheus}/api/v1/labels")["data"]
    places["prometheus label values"] = repr(
        {
            label: _get(f"{observed.prometheus}/api/v1/label/{label}/values")["data"]
            for label in labels
        }
    )
    headers, payloads = _dlq_records(observed.settings)
    places["dlq headers"] = repr(headers)
    # The scan can see: the canaries really went through (the DLQ keeps the rejected posts
    # intact, by design) and every place scanned has content.
    assert any(CANARIES[0].encode() in p for p in payloads)
    assert any(CANARY.encode() in p for p in payloads)
    assert all(len(text) > 200 for text in places.values()), {k: len(v) for k, v in places.items()}
    leaks = {
        where: canary
        for where, text in places.items()
        for canary in CANARIES
        if canary.lower() in text.lower()
    }
    assert not leaks, leaks


def test_a_taken_metrics_port_is_a_clear_start_up_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**env_for(Settings()), "GUARDSTREAM_METRICS_PORT": str(port)}
        env["KAFKA_BOOTSTRAP"] = "127.0.0.1:1"  # never reached: telemetry is installed first
        result = subprocess.run(
            [sys.executable, "-m", "guardstream", "triage"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "GUARDSTREAM_METRICS_PORT" in result.stderr and "Traceback" not in result.stderr
