"""`guardstream maintenance`: every retention job once (the Helm chart's CronJob runs it).

Each store keeps what it holds for its configured time (`RetentionSettings`, documented in
docs/operations/privacy.md). Jobs are idempotent (a second run finds nothing to purge) and
safe with concurrent runs: a run holds a PostgreSQL advisory lock for its whole length, and a
run that cannot take it does nothing and says so. Metrics: rows purged per store
(`guardstream.retention.purged`) and the age of the oldest row kept
(`guardstream.retention.oldest_age`), exported like every process's (`runtime.telemetry`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
from aiokafka.errors import KafkaError
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from guardstream.contracts.events import utcnow
from guardstream.review.erasure import STORE_ERRORS
from guardstream.review.store import ReviewStore
from guardstream.runtime.kafka import apply_topic_retention
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive

meter = metrics.get_meter("guardstream")
purged_rows = meter.create_counter(
    "guardstream.retention.purged",
    unit="{row}",
    description="Rows (archive: samples) deleted by retention, by store",
)
_oldest: dict[str, float] = {}


def _observe_oldest(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(age, {"store": store}) for store, age in sorted(_oldest.items())]


meter.create_observable_gauge(
    "guardstream.retention.oldest_age",
    callbacks=[_observe_oldest],
    unit="s",
    description="Age of the oldest row each store keeps after the last maintenance run",
)

# pg_advisory_lock key of `guardstream maintenance` (one per database; "gsmt").
MAINTENANCE_LOCK = 0x6773_6D74

__all__ = ["STORE_ERRORS", "MaintenanceReport", "run_maintenance"]


@dataclass
class MaintenanceReport:
    ran: bool  # False: another run held the lock; nothing was done
    purged: dict[str, int] = field(default_factory=dict)
    oldest_age_s: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # jobs that could not do their part


async def _lock(conn: asyncpg.Connection, timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK):
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(min(1.0, timeout_s))


async def run_maintenance(
    settings: Settings, *, now: datetime | None = None, schema: str | None = None
) -> MaintenanceReport:
    """Run every purge once under the maintenance lock (see the module docstring)."""
    at = now or utcnow()
    lock = await asyncpg.connect(settings.database.url.get_secret_value())
    try:
        if not await _lock(lock, settings.retention.lock_timeout_s):
            return MaintenanceReport(ran=False)
        try:
            return await _purge(settings, at, schema)
        finally:
            await lock.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
    finally:
        await lock.close()


async def _purge(settings: Settings, at: datetime, schema: str | None) -> MaintenanceReport:
    keep = settings.retention
    report = MaintenanceReport(ran=True)
    store = await ReviewStore.open(settings, schema=schema)
    try:
        rows = store.retention
        report.purged["decided_posts"] = await rows.final_posts(
            at - timedelta(days=keep.post_text_days)
        )
        report.purged["unreviewed_post_texts"] = await store.posts.purge(
            at - timedelta(seconds=settings.review.post_text_ttl_s)
        )
        report.purged["outbox"] = await rows.relayed_outbox(
            at - timedelta(days=keep.outbox_days),
            at - timedelta(seconds=settings.review.human_verdict_ttl_s),
        )
        report.purged["audit"] = await rows.audit(at - timedelta(days=keep.audit_days))
        tokens, sessions = await store.credentials.purge(at)
        report.purged["expired_credentials"] = tokens + sessions
        report.purged["author_index"] = await rows.author_index(
            at - timedelta(days=keep.archive_days)
        )
        oldest = await rows.oldest()
    finally:
        await store.close()
    archive = Archive(settings.feedback.dir)
    cut = (at - timedelta(days=keep.archive_days)).astimezone(UTC).date()
    report.purged["feedback_archive"] = archive.purge(cut)
    first_day = archive.oldest_day()
    oldest["feedback_archive"] = _day_start(first_day) if first_day else None
    try:
        topics = await apply_topic_retention(settings)
    except (OSError, TimeoutError, KafkaError) as exc:
        report.problems.append(f"kafka topics: broker unreachable ({type(exc).__name__})")
    else:
        if topics.refused is not None and topics.differing:
            names = ", ".join(sorted(topics.differing))
            report.problems.append(
                f"kafka topics: retention of {names} differs from the configured one and the"
                f" broker refused the change ({topics.refused})"
            )
    for name, count in report.purged.items():
        purged_rows.add(count, {"store": name})
    report.oldest_age_s = {
        name: (at - when).total_seconds() if when is not None else None
        for name, when in oldest.items()
    }
    _oldest.clear()
    _oldest.update({k: v for k, v in report.oldest_age_s.items() if v is not None})
    return report


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
