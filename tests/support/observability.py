"""What the dashboards and alert rules query, and which metrics exist to answer them.

`expressions()` lists every PromQL expression of every dashboard panel and alert rule;
the metric lists say which names guardstream's own processes export (they must return data in
the e2e run, which scrapes triage, the scorer, the SLA timer, the review console and the
moderation API), which
only appear on failures, and which only a process the e2e run does not start would export
(checked for syntax only: delete a name there once its process is scraped in
tests/e2e/test_observability.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "compose" / "prometheus.yml"
LOCAL_SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.local.yml"

# Exported by triage and the scorer (guardstream.runtime.metrics, guardstream.scorer.metered).
PIPELINE_METRICS = frozenset(
    {
        "up",
        "guardstream_consumer_records_total",
        "guardstream_consumer_batch_size_bucket",
        "guardstream_consumer_batch_duration_seconds_bucket",
        "guardstream_consumer_lag",
        "guardstream_consumer_in_flight",
        "guardstream_consumer_assigned_partitions",
        "guardstream_pipeline_decisions_total",
        "guardstream_dlq_records_total",
        "guardstream_redis_available",
        "guardstream_triage_outcomes_total",
        "guardstream_triage_languages_total",
        "guardstream_scorer_outcomes_total",
        "guardstream_scorer_latency_seconds_bucket",
        "guardstream_scorer_latency_seconds_count",
        "guardstream_scorer_tokens_bucket",
        "guardstream_scorer_tokens_sum",
        "guardstream_scorer_tokens_count",
        "guardstream_scorer_adapter_serving",
    }
)
# Exported by the moderation API (guardstream.api.telemetry), per route template and outcome.
API_METRICS = frozenset(
    {
        "guardstream_api_request_duration_seconds_bucket",
        "guardstream_api_request_duration_seconds_count",
        "guardstream_api_request_duration_seconds_sum",
    }
)
# Also guardstream's, but counted only when something fails (no series in a healthy run).
FAILURE_ONLY_METRICS = frozenset(
    {
        "guardstream_consumer_retries_total",
        "guardstream_redis_failures_total",
        "guardstream_scorer_failures_total",
        "guardstream_sla_dlq_total",
        "guardstream_review_denied_total",
        "guardstream_review_shed_total",
        "guardstream_review_samples_without_text_total",
        "guardstream_policy_reloads_total",  # only when the policy directory changes
    }
)
# Exported by the SLA timer (guardstream.sla.app) and the review console
# (guardstream.review.metrics; its outbox relay counts the feedback samples it archives). The
# e2e run drives a review decided in time, a senior's QA re-review and an expiry reviewed late.
HUMAN_METRICS = frozenset(
    {
        "guardstream_sla_pending",
        "guardstream_sla_oldest_pending_age_seconds",
        "guardstream_sla_downgrades_total",
        "guardstream_sla_warnings_total",
        "guardstream_sla_late_reviews_total",
        "guardstream_sla_assignment_breaches_total",
        "guardstream_sla_downgrade_lateness_seconds_bucket",
        "guardstream_sla_review_response_time_avg_seconds",
        "guardstream_sla_assignment_time_avg_seconds",
        "guardstream_review_tasks_created_total",
        "guardstream_review_response_time_seconds_bucket",
        "guardstream_review_response_time_seconds_sum",
        "guardstream_review_response_time_seconds_count",
        "guardstream_review_queue_depth",
        "guardstream_review_decisions_total",
        "guardstream_review_qa_agreement_ratio",
        "guardstream_feedback_samples_total",
    }
)
# Exported only by processes the e2e run does not start (the weekly feedback jobs): none of
# the dashboards' or rules' expressions needs one today.
AWAITING_METRICS: frozenset[str] = frozenset()
KNOWN_METRICS = (
    PIPELINE_METRICS | HUMAN_METRICS | API_METRICS | FAILURE_ONLY_METRICS | AWAITING_METRICS
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"\b(guardstream_[a-z0-9_]+|up)\b")


@dataclass(frozen=True)
class Expression:
    where: str  # "dashboard overview.json: panel 'title' A" or "rule GuardstreamScorerDown"
    expr: str
    is_alert: bool

    @property
    def metrics(self) -> frozenset[str]:
        return metric_names(self.expr)

    def promql(self) -> str:
        """The expression with Grafana's variables replaced, as Prometheus can run it."""
        return self.expr.replace("$__rate_interval", "1m").replace("$tenant", ".*")


def metric_names(expr: str) -> frozenset[str]:
    return frozenset(_METRIC.findall(_STRING.sub('""', expr)))


def expressions() -> list[Expression]:
    found: list[Expression] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel["targets"]:
                where = f"dashboard {path.name}: panel {panel['title']!r} {target['refId']}"
                found.append(Expression(where, target["expr"], is_alert=False))
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            found.append(Expression(f"rule {name}", str(rule["expr"]).strip(), is_alert=True))
    return found
