"""The topic catalogue: every topic guardstream reads or writes, in one place.

Names, partition counts, message keys and retention live here so that `guardstream topics
create`, the processes and the deployment all agree. Partition counts bound consumer
parallelism; keys decide ordering (per post for decisions, per content key for scoring so equal
content lands on one scorer and can be coalesced).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY_MS = 24 * 3600 * 1000


class Topic(StrEnum):
    POSTS = "posts.v1"
    SCORE_REQUESTS = "moderation.score-requests.v1"
    ALLOW = "moderation.actions.allow.v1"
    BLOCK = "moderation.actions.block.v1"
    REVIEW = "moderation.actions.review.v1"
    # Graded actions (schema 1.1): topics of their own, so readers of the three above never
    # see an action they do not know. `hold` travels on REVIEW (it is a review item).
    LIMIT = "moderation.actions.limit.v1"
    WARN = "moderation.actions.warn.v1"
    REMOVE = "moderation.actions.remove.v1"
    DLQ = "moderation.dlq.v1"
    REVIEWS = "moderation.reviews.v1"
    ALERTS = "moderation.alerts.v1"
    ASSIGNMENTS = "moderation.review-assignments.v1"
    SLA_EVENTS = "moderation.sla-events.v1"
    ESCALATIONS = "moderation.score-escalations.v1"
    SHADOW = "moderation.shadow.v1"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    topic: Topic
    partitions: int
    key: str
    retention_ms: int
    purpose: str

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": "delete"}


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.POSTS, 12, "post_id", 7 * DAY_MS, "posts to moderate, from producers"),
    TopicSpec(
        Topic.SCORE_REQUESTS, 12, "content_key", 3 * DAY_MS, "cache misses, from triage to scorer"
    ),
    TopicSpec(Topic.ALLOW, 6, "post_id", 7 * DAY_MS, "decisions: publish"),
    TopicSpec(Topic.BLOCK, 6, "post_id", 30 * DAY_MS, "decisions: take down"),
    TopicSpec(
        Topic.REVIEW, 6, "post_id", 30 * DAY_MS, "decisions: send to human review (review, hold)"
    ),
    TopicSpec(Topic.LIMIT, 6, "post_id", 30 * DAY_MS, "decisions: publish, reduced distribution"),
    TopicSpec(Topic.WARN, 6, "post_id", 30 * DAY_MS, "decisions: publish, notify the author"),
    TopicSpec(Topic.REMOVE, 6, "post_id", 30 * DAY_MS, "decisions: take down a published post"),
    TopicSpec(Topic.DLQ, 3, "origin key", 30 * DAY_MS, "records no process could accept"),
    TopicSpec(Topic.REVIEWS, 6, "post_id", 90 * DAY_MS, "human review decisions"),
    TopicSpec(Topic.ALERTS, 3, "alert_id", 30 * DAY_MS, "operational alerts (SLA, QA)"),
    # Same partition count and key as actions.review and reviews: the SLA app's table is
    # co-partitioned with all three of its sources.
    TopicSpec(
        Topic.ASSIGNMENTS, 6, "post_id", 30 * DAY_MS, "review tasks assigned / released (console)"
    ),
    TopicSpec(Topic.SLA_EVENTS, 6, "post_id", 30 * DAY_MS, "SLA warnings, expiries, late reviews"),
    TopicSpec(
        Topic.ESCALATIONS,
        12,
        "content_key",
        3 * DAY_MS,
        "cascade: requests the small model was unsure of, for a larger model's scorer",
    ),
    # Read back whole by the feedback job's shadow evaluation: retention outlasts the
    # longest shadow window (GUARDSTREAM_FEEDBACK_SHADOW_WINDOW_DAYS).
    TopicSpec(
        Topic.SHADOW,
        3,
        "content_key",
        60 * DAY_MS,
        "shadow candidate adapters' verdicts beside the serving ones (never actioned)",
    ),
)

SPECS: dict[Topic, TopicSpec] = {spec.topic: spec for spec in CATALOGUE}

# Every topic decisions are published on, in the order readers list them.
ACTION_TOPICS: tuple[Topic, ...] = (
    Topic.ALLOW,
    Topic.BLOCK,
    Topic.REVIEW,
    Topic.LIMIT,
    Topic.WARN,
    Topic.REMOVE,
)


def topic_name(topic: Topic, namespace: str = "") -> str:
    """The physical name: the namespace prefixes every topic so test runs never collide."""
    return f"{namespace}.{topic.value}" if namespace else topic.value


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Physical topic names for one namespace; processes take this, not raw strings."""

    namespace: str = ""

    def __getitem__(self, topic: Topic) -> str:
        return topic_name(topic, self.namespace)

    def all(self) -> dict[Topic, str]:
        return {spec.topic: self[spec.topic] for spec in CATALOGUE}
