"""guardstream's Grafana dashboards as code: `python deploy/grafana/generate.py` rewrites
deploy/grafana/dashboards/*.json (a unit test fails when they are out of date).

Every panel is a PromQL expression over the metrics guardstream exports (names in
docs/operations/observability.md, "Metrics"). `$__rate_interval` and the `$tenant` variable are
Grafana's; tests substitute them when they evaluate each expression against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
TENANT = 'tenant=~"$tenant"'


def ratio(part: str, whole: str) -> str:
    return f"sum(rate({part}[{RATE}])) / sum(rate({whole}[{RATE}]))"


def share(part: str, whole: str) -> str:
    """`ratio` for a part that may have no series yet (no `und` post so far): 0, not no data."""
    return f"(sum(rate({part}[{RATE}])) or vector(0)) / sum(rate({whole}[{RATE}]))"


def quantile(q: float, bucket: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({bucket}[{RATE}])))"


class Board:
    def __init__(self, uid: str, title: str, description: str, tenant_var: bool = False):
        self.uid, self.title, self.description = uid, title, description
        self.tenant_var = tenant_var
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = 0
        self._row_h = 0

    def panel(
        self,
        title: str,
        *targets: tuple[str, str],
        kind: str = "timeseries",
        unit: str = "short",
        width: int = 12,
        height: int = 8,
        description: str = "",
        thresholds: list[tuple[float | None, str]] | None = None,
    ) -> Board:
        if self._x + width > 24:
            self._x, self._y = 0, self._y + self._row_h
            self._row_h = 0
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": height, "w": width, "x": self._x, "y": self._y},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": DS,
                    "expr": expr,
                    "legendFormat": legend,
                    "instant": kind in ("stat", "table", "gauge"),
                    "range": kind not in ("stat", "table", "gauge"),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
            # Counters of rare events (retries, failures) have no series until the first one.
            "fieldConfig": {"defaults": {"unit": unit, "noValue": "0"}, "overrides": []},
            "options": {},
        }
        if thresholds:
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [{"value": v, "color": c} for v, c in thresholds],
            }
        if kind == "table":
            panel["transformations"] = [{"id": "merge", "options": {}}]
        self.panels.append(panel)
        self._x += width
        self._row_h = max(self._row_h, height)
        return self

    def json(self) -> dict[str, Any]:
        variables: list[dict[str, Any]] = [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            }
        ]
        if self.tenant_var:
            variables.append(
                {
                    "name": "tenant",
                    "label": "Tenant",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "query": "label_values(guardstream_pipeline_decisions_total, tenant)",
                        "refId": "tenant",
                    },
                    "definition": "label_values(guardstream_pipeline_decisions_total, tenant)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                    "hide": 0,
                }
            )
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["guardstream"],
            "editable": True,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "timezone": "browser",
            "templating": {"list": variables},
            "annotations": {"list": []},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["guardstream"],
                    "asDropdown": True,
                    "title": "guardstream",
                }
            ],
            "panels": self.panels,
        }


DECISIONS = "guardstream_pipeline_decisions_total"
TRIAGE = "guardstream_triage_outcomes_total"
SCORER = "guardstream_scorer_outcomes_total"
TRIAGED = f'{TRIAGE}{{outcome=~"cache_hit|near_hit|scoring"}}'
LANGUAGES = "guardstream_triage_languages_total"


def overview() -> Board:
    b = Board("guardstream-overview", "guardstream / Overview", "Is moderation keeping up?", True)
    b.panel(
        "Decisions / s by action",
        (f"sum by (action) (rate({DECISIONS}{{{TENANT}}}[{RATE}]))", "{{action}}"),
        unit="ops",
    )
    b.panel(
        "Decisions / s by verdict",
        (f"sum by (verdict) (rate({DECISIONS}{{{TENANT}}}[{RATE}]))", "{{verdict}}"),
        unit="ops",
    )
    b.panel(
        "Decisions / s by source (model / cache / human / sla_timeout)",
        (f"sum by (source) (rate({DECISIONS}{{{TENANT}}}[{RATE}]))", "{{source}}"),
        unit="ops",
    )
    b.panel(
        "Consumer lag by group",
        ("sum by (group) (guardstream_consumer_lag)", "{{group}}"),
        description="Records behind the log end (highwater minus done watermark).",
    )
    b.panel(
        "Cache hit ratio (exact)",
        (ratio(f'{TRIAGE}{{outcome="cache_hit"}}', TRIAGED), "exact"),
        kind="stat",
        unit="percentunit",
        width=6,
    )
    b.panel(
        "Near-duplicate hit ratio",
        (ratio(f'{TRIAGE}{{outcome="near_hit"}}', TRIAGED), "near"),
        kind="stat",
        unit="percentunit",
        width=6,
    )
    b.panel(
        "DLQ records (1h)",
        ("sum(increase(guardstream_dlq_records_total[1h]))", "dlq"),
        kind="stat",
        width=6,
        thresholds=[(None, "green"), (1, "orange"), (100, "red")],
    )
    b.panel(
        "Processes up",
        ('up{job=~"guardstream-.*"}', "{{job}} {{instance}}"),
        kind="stat",
        width=6,
        thresholds=[(None, "red"), (1, "green")],
    )
    b.panel(
        "Review queue depth",
        ("sum(guardstream_review_queue_depth)", "queue"),
        kind="stat",
        width=6,
    )
    b.panel(
        "Oldest pending review",
        ("max(guardstream_sla_oldest_pending_age_seconds)", "oldest"),
        kind="stat",
        unit="s",
        width=6,
        thresholds=[(None, "green"), (3600, "orange"), (5400, "red")],
    )
    b.panel(
        "SLA downgrades (24h)",
        ("sum(increase(guardstream_sla_downgrades_total[24h]))", "downgrades"),
        kind="stat",
        width=6,
        thresholds=[(None, "green"), (1, "red")],
    )
    b.panel(
        "Adapter serving",
        ("max by (model, adapter) (guardstream_scorer_adapter_serving)", "{{model}} {{adapter}}"),
        kind="table",
        width=6,
    )
    return b


def pipeline() -> Board:
    b = Board("guardstream-pipeline", "guardstream / Pipeline", "Triage, consumers, DLQ, Redis")
    b.panel(
        "Records consumed / s",
        (
            f"sum by (process, topic) (rate(guardstream_consumer_records_total[{RATE}]))",
            "{{process}} {{topic}}",
        ),
        unit="ops",
    )
    b.panel(
        "Triage outcomes / s",
        (f"sum by (outcome) (rate({TRIAGE}[{RATE}]))", "{{outcome}}"),
        unit="ops",
    )
    b.panel(
        "Cache hit ratios",
        (ratio(f'{TRIAGE}{{outcome="cache_hit"}}', TRIAGED), "exact"),
        (ratio(f'{TRIAGE}{{outcome="near_hit"}}', TRIAGED), "near-duplicate"),
        (ratio(f'{SCORER}{{outcome="cache_hit"}}', f'{SCORER}{{outcome="consumed"}}'), "scorer"),
        unit="percentunit",
    )
    b.panel(
        "Posts / s by language (top 10)",
        (f"topk(10, sum by (lang) (rate({LANGUAGES}[{RATE}])))", "{{lang}}"),
        unit="ops",
        description=(
            "The post's own `lang`, or the one triage detected when it had none (`und`: no"
            " language could be told; `other`: a given `lang` outside the detector's 176)."
        ),
    )
    b.panel(
        "Language detected, not given",
        (share(f'{LANGUAGES}{{source="detected"}}', LANGUAGES), "detected"),
        (share(f'{LANGUAGES}{{lang="und"}}', LANGUAGES), "undetermined"),
        unit="percentunit",
        description="Share of posts sent without `lang`, and of posts whose language is `und`.",
    )
    b.panel(
        "Consumer lag by partition",
        ("sum by (group, topic, partition) (guardstream_consumer_lag)", "{{group}} p{{partition}}"),
    )
    b.panel(
        "In-flight records",
        ("sum by (process) (guardstream_consumer_in_flight)", "{{process}}"),
    )
    b.panel(
        "Batch size p50 / p95",
        (quantile(0.5, "guardstream_consumer_batch_size_bucket", "process"), "p50 {{process}}"),
        (quantile(0.95, "guardstream_consumer_batch_size_bucket", "process"), "p95 {{process}}"),
    )
    b.panel(
        "Batch duration p95 (fetch → outputs acknowledged)",
        (
            quantile(0.95, "guardstream_consumer_batch_duration_seconds_bucket", "process"),
            "{{process}}",
        ),
        unit="s",
    )
    b.panel(
        "DLQ records / s by reason",
        (f"sum by (reason) (rate(guardstream_dlq_records_total[{RATE}]))", "{{reason}}"),
        unit="ops",
    )
    b.panel(
        "Transient retries / s",
        (
            f"sum by (process, error) (rate(guardstream_consumer_retries_total[{RATE}]))",
            "{{process}} {{error}}",
        ),
        unit="ops",
        description="Batches retried after a transient failure (broker, Redis, engine).",
    )
    b.panel(
        "Partitions held",
        ("sum by (process) (guardstream_consumer_assigned_partitions)", "{{process}}"),
    )
    b.panel(
        "Redis available",
        ("min by (store) (guardstream_redis_available)", "{{store}}"),
        thresholds=[(None, "red"), (1, "green")],
    )
    b.panel(
        "Redis failures / s",
        (
            f"sum by (store) (rate(guardstream_redis_failures_total[{RATE}]))",
            "{{store}}",
        ),
        unit="ops",
    )
    return b


def scorer() -> Board:
    b = Board("guardstream-scorer", "guardstream / Scorer", "Qwen3Guard-Gen on vLLM")
    lat = "guardstream_scorer_latency_seconds_bucket"
    b.panel(
        "Model call latency",
        (quantile(0.5, lat), "p50"),
        (quantile(0.95, lat), "p95"),
        (quantile(0.99, lat), "p99"),
        unit="s",
    )
    b.panel(
        "Model calls / s",
        (
            f"sum by (model, adapter) (rate(guardstream_scorer_latency_seconds_count[{RATE}]))",
            "{{model}} {{adapter}}",
        ),
        unit="ops",
    )
    b.panel(
        "Model call failures / s",
        (f"sum by (error) (rate(guardstream_scorer_failures_total[{RATE}]))", "{{error}}"),
        unit="ops",
    )
    b.panel(
        "Tokens per request (p50 / p95)",
        (quantile(0.5, "guardstream_scorer_tokens_bucket", "kind"), "p50 {{kind}}"),
        (quantile(0.95, "guardstream_scorer_tokens_bucket", "kind"), "p95 {{kind}}"),
    )
    b.panel(
        "Mean tokens per request",
        (
            f"sum by (kind) (rate(guardstream_scorer_tokens_sum[{RATE}]))"
            f" / sum by (kind) (rate(guardstream_scorer_tokens_count[{RATE}]))",
            "{{kind}}",
        ),
    )
    b.panel(
        "Scorer outcomes / s",
        (f"sum by (outcome) (rate({SCORER}[{RATE}]))", "{{outcome}}"),
        unit="ops",
    )
    b.panel(
        "Unusable model output ratio",
        (
            ratio(f'{SCORER}{{outcome="unparseable"}}', f'{SCORER}{{outcome="scored"}}'),
            "unparseable",
        ),
        unit="percentunit",
        description="Unparseable output becomes `controversial` (humans look at it).",
    )
    b.panel(
        "Model verdicts / s",
        (f'sum by (verdict) (rate({DECISIONS}{{source="model"}}[{RATE}]))', "{{verdict}}"),
        unit="ops",
    )
    b.panel(
        "Adapter serving",
        ("max by (model, adapter) (guardstream_scorer_adapter_serving)", "{{model}} {{adapter}}"),
        kind="table",
    )
    b.panel(
        "Scorer lag",
        ('sum by (partition) (guardstream_consumer_lag{group=~".*scorer"})', "p{{partition}}"),
    )
    b.panel(
        "Scorer in-flight",
        ('sum(guardstream_consumer_in_flight{process="scorer"})', "in flight"),
    )
    return b


def review_sla() -> Board:
    b = Board("guardstream-review-sla", "guardstream / Review & SLA", "Humans and the 2 h SLA")
    resp = "guardstream_review_response_time_seconds"
    b.panel("Review queue depth", ("sum(guardstream_review_queue_depth)", "queue"))
    b.panel(
        "Pending contested items (SLA app) and oldest age",
        ("sum(guardstream_sla_pending)", "pending"),
        ("max(guardstream_sla_oldest_pending_age_seconds)", "oldest age (s)"),
    )
    b.panel(
        "Average review response time (1h)",
        (f"sum(rate({resp}_sum[1h])) / sum(rate({resp}_count[1h]))", "mean"),
        kind="stat",
        unit="s",
        width=6,
    )
    b.panel(
        "Review response time p90",
        (quantile(0.9, f"{resp}_bucket"), "p90"),
        kind="stat",
        unit="s",
        width=6,
    )
    b.panel(
        "Reviewer QA agreement",
        ("min(guardstream_review_qa_agreement_ratio)", "agreement"),
        kind="stat",
        unit="percentunit",
        width=6,
        thresholds=[(None, "red"), (0.9, "green")],
    )
    b.panel(
        "Review decisions / s",
        (f"sum(rate(guardstream_review_decisions_total[{RATE}]))", "decisions"),
        kind="stat",
        unit="ops",
        width=6,
    )
    b.panel(
        "SLA early warnings, downgrades, late reviews, assignment breaches (1h)",
        ("sum(increase(guardstream_sla_warnings_total[1h]))", "warnings"),
        ("sum(increase(guardstream_sla_downgrades_total[1h]))", "downgrades"),
        ("sum(increase(guardstream_sla_late_reviews_total[1h]))", "late reviews"),
        ("sum(increase(guardstream_sla_assignment_breaches_total[1h]))", "assignment breaches"),
        width=24,
    )
    b.panel(
        "Decisions / s by source",
        (f"sum by (source) (rate({DECISIONS}[{RATE}]))", "{{source}}"),
        unit="ops",
        description="human and sla_timeout decisions come from review and the SLA app.",
    )
    b.panel(
        "Sent to review / s",
        (f'sum(rate({DECISIONS}{{action="review"}}[{RATE}]))', "review"),
        unit="ops",
    )
    return b


def feedback() -> Board:
    b = Board("guardstream-feedback", "guardstream / Feedback loop", "Reviews → LoRA → adapters")
    b.panel(
        "Curated feedback samples",
        ("sum(guardstream_feedback_samples_total)", "samples"),
        kind="stat",
        width=8,
        thresholds=[(None, "blue"), (500, "green")],
        description="A LoRA run needs 500 curated samples.",
    )
    b.panel(
        "Reviewer QA agreement",
        ("min(guardstream_review_qa_agreement_ratio)", "agreement"),
        kind="stat",
        unit="percentunit",
        width=8,
        thresholds=[(None, "red"), (0.9, "green")],
    )
    b.panel(
        "Adapter serving",
        ("max by (model, adapter) (guardstream_scorer_adapter_serving)", "{{model}} {{adapter}}"),
        kind="table",
        width=8,
    )
    b.panel(
        "Feedback samples / h",
        ("sum(increase(guardstream_feedback_samples_total[1h]))", "samples"),
    )
    b.panel(
        "Model verdicts / s (watch the mix after an adapter promotion)",
        (
            f'sum by (verdict) (rate({DECISIONS}{{source="model"}}[{RATE}]))',
            "{{verdict}}",
        ),
        unit="ops",
    )
    return b


API = "guardstream_api_request_duration_seconds"
API_ROUTED = 'route!="unmatched"'
API_ERRORS = 'outcome=~"5xx|503"'


def api() -> Board:
    b = Board(
        "guardstream-api",
        "guardstream / Moderation API",
        "The synchronous door: latency per route, outcomes, errors",
    )
    b.panel(
        "Latency p50 by route",
        (quantile(0.5, f"{API}_bucket{{{API_ROUTED}}}", "route"), "{{route}}"),
        unit="s",
        description="Cache hits answer in milliseconds; misses wait for the scorer's door.",
    )
    b.panel(
        "Latency p99 by route",
        (quantile(0.99, f"{API}_bucket{{{API_ROUTED}}}", "route"), "{{route}}"),
        unit="s",
        description="Alert GuardstreamApiLatencyHigh: p99 over 2.5 s for 10 minutes.",
    )
    b.panel(
        "Requests / s by route and outcome",
        (
            f"sum by (route, outcome) (rate({API}_count[{RATE}]))",
            "{{route}} {{outcome}}",
        ),
        unit="reqps",
    )
    b.panel(
        "Error rate (5xx and 503)",
        (
            f"(sum(rate({API}_count{{{API_ERRORS}}}[{RATE}])) or vector(0))"
            f" / sum(rate({API}_count[{RATE}]))",
            "errors",
        ),
        (
            f'(sum(rate({API}_count{{outcome="429"}}[{RATE}])) or vector(0))'
            f" / sum(rate({API}_count[{RATE}]))",
            "rate limited (429)",
        ),
        unit="percentunit",
        description="503: the scorer saturated or unreachable (Retry-After). "
        "Alert GuardstreamApiErrorRateHigh: over 5% for 5 minutes.",
        thresholds=[(None, "green"), (0.05, "red")],
    )
    b.panel(
        "Error rate by route",
        (
            f"(sum by (route) (rate({API}_count{{{API_ERRORS}}}[{RATE}])) or"
            f" 0 * sum by (route) (rate({API}_count[{RATE}])))"
            f" / sum by (route) (rate({API}_count[{RATE}]))",
            "{{route}}",
        ),
        unit="percentunit",
    )
    b.panel(
        "API decisions / s by source",
        (
            f'sum by (source) (rate({DECISIONS}{{process="api"}}[{RATE}]))',
            "{{source}}",
        ),
        unit="ops",
        description="Decisions the API published itself (cache, near-duplicate, rules); "
        "misses are published by the scorer.",
    )
    return b


BOARDS = {
    "overview": overview,
    "pipeline": pipeline,
    "scorer": scorer,
    "review-sla": review_sla,
    "feedback": feedback,
    "api": api,
}


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {
        f"{name}.json": json.dumps(build().json(), indent=2, ensure_ascii=False) + "\n"
        for name, build in BOARDS.items()
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
