"""The review console's metrics, on the OpenTelemetry API (the process installs the SDK).

Attributes are low-cardinality only: tenant, verdict, outcome, stage, reason — never post ids,
reviewer ids or text.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

meter = metrics.get_meter("guardstream")

tasks_created = meter.create_counter(
    "guardstream.review.tasks_created", unit="{task}", description="Review tasks created"
)
decisions = meter.create_counter(
    "guardstream.review.decisions",
    unit="{review}",
    description="Reviews stored (first stage and QA), by verdict, outcome and lateness",
)
response_time = meter.create_histogram(
    "guardstream.review.response_time",
    unit="s",
    description="From the decision that sent a post to review to the human decision",
)
denied = meter.create_counter(
    "guardstream.review.denied",
    unit="{request}",
    description="Requests refused and audited: no or bad credentials, other tenant, CSRF",
)
shed = meter.create_counter(
    "guardstream.review.shed",
    unit="{request}",
    description="Requests refused at the edge: body too large, busy, throttled, control characters",
)

# Gauges read what the review process's timer last counted (per tenant), not the database.
queue_depth_by_tenant: dict[str, int] = {}
qa_agreement_by_tenant: dict[str, float] = {}


def _queue_depth(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, {"tenant": t}) for t, n in list(queue_depth_by_tenant.items())]


def _qa_agreement(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(r, {"tenant": t}) for t, r in list(qa_agreement_by_tenant.items())]


meter.create_observable_gauge(
    "guardstream.review.queue_depth",
    callbacks=[_queue_depth],
    unit="{item}",
    description="Open review tasks (pending or assigned)",
)
meter.create_observable_gauge(
    "guardstream.review.qa_agreement_ratio",
    callbacks=[_qa_agreement],
    unit="1",
    description="Share of senior QA re-reviews that agree with the first review",
)

samples_without_text = meter.create_counter(
    "guardstream.review.samples_without_text",
    unit="{review}",
    description="Reviews whose post text had not arrived: not archived for training yet",
)
feedback_samples = meter.create_counter(
    "guardstream.feedback.samples",
    unit="{sample}",
    description="Reviews written to the feedback archive",
)
