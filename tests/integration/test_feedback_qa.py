"""`guardstream feedback qa-sample` as a user runs it: a month of reviews in the archive,
senior re-reviews that disagree too often, one alert on the real broker naming the reviewer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from guardstream.core.contracts import Alert, ReviewStage, Verdict
from guardstream.core.kafka import ensure_topics
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic
from guardstream.feedback.archive import Archive
from guardstream.feedback.sample import FeedbackSample
from tests.integration.review.conftest import read_topic
from tests.support.feedback import taught_samples
from tests.support.processes import env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def overturned(first: FeedbackSample) -> Verdict:
    return Verdict.SAFE if first.human_verdict is Verdict.UNSAFE else Verdict.UNSAFE


def qa_sample(settings: Settings, period: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "guardstream", "feedback", "qa-sample", "--period", period,
         "--size", "6"],
        env=env_for(settings),
        capture_output=True,
        timeout=120,
        check=False,
    )  # fmt: skip


async def test_qa_sample_picks_reviews_and_alerts_on_low_agreement(settings: Settings) -> None:
    await ensure_topics(settings)
    in_october = datetime(2026, 10, 10, tzinfo=UTC)
    firsts = [
        s.model_copy(update={"reviewer": "rv-a" if n % 2 else "rv-b", "reviewed_at": in_october})
        for n, s in enumerate(taught_samples())
    ]
    seniors = [  # rv-b's reviews are all overturned by the senior
        f.model_copy(
            update={
                "sample_id": f"qa-{f.sample_id}",
                "stage": ReviewStage.QA,
                "reviewer": "senior-1",
                "human_verdict": f.human_verdict if f.reviewer == "rv-a" else overturned(f),
                "reviewed_at": in_october + timedelta(days=3),
            }
        )
        for f in firsts
    ]
    Archive(settings.feedback_dir).append([*firsts, *seniors])

    done = await asyncio.to_thread(qa_sample, settings, "2026-10")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout.splitlines()[-1])
    assert summary["period"] == "2026-10"
    assert summary["sampled"] == 0  # every October review was re-reviewed already
    assert summary["qa_checked"] == len(firsts)
    assert len(summary["alerts"]) == 1
    (raw,) = await read_topic(settings, Topic.ALERTS, 1)
    alert = Alert.model_validate(raw)
    assert alert.kind == "qa_agreement_low"
    assert alert.labels["reviewers"] == "rv-b"
    listing = orjson.loads((settings.feedback_dir / "qa" / "2026-10.json").read_bytes())
    assert listing == []

    # A month without re-reviews yet: a sample to re-review, spread over both reviewers.
    november = [
        f.model_copy(update={"sample_id": f"n-{f.sample_id}", "content_key": f"{n:032x}"[::-1],
                             "reviewed_at": datetime(2026, 11, 5, tzinfo=UTC)})
        for n, f in enumerate(firsts)
    ]  # fmt: skip
    Archive(settings.feedback_dir).append(november)
    done = await asyncio.to_thread(qa_sample, settings, "2026-11")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    listing = orjson.loads((settings.feedback_dir / "qa" / "2026-11.json").read_bytes())
    assert len(listing) == 6
    assert sorted(item["reviewer"] for item in listing) == ["rv-a"] * 3 + ["rv-b"] * 3
