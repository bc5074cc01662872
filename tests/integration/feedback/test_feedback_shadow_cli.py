"""`guardstream feedback shadow-report` and `feedback run` on a real broker: the shadow topic is
read back whole (a record that is not a shadow record is counted, not fatal), joined with the
archive's human labels, reported without any change, then acted on by the weekly run."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.contracts.events import ShadowRecord, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.model.adapters import AdapterRegistry
from guardstream.runtime.kafka import ensure_topics, make_producer
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive
from tests.unit.feedback.test_shadow import label, record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

C, S, U = Verdict.CONTROVERSIAL, Verdict.SAFE, Verdict.UNSAFE


async def publish(settings: Settings, values: list[bytes]) -> None:
    await ensure_topics(settings, [Topic.SHADOW])
    producer = make_producer(settings, client_id="test-shadow")
    await producer.start()
    try:
        for n, value in enumerate(values):
            await producer.send_and_wait(
                TopicNames(settings.namespace)[Topic.SHADOW], value, key=f"{n}".encode()
            )
    finally:
        await producer.stop()


def last_json(output: str) -> dict[str, object]:
    line = [ln for ln in output.splitlines() if ln.startswith("{")][-1]
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_feedback_run_judges_the_shadow_candidate_on_the_topic(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "peft"
    source.mkdir()
    (source / "adapter_config.json").write_text(json.dumps({"r": 8}))
    registry = AdapterRegistry(tmp_path / "adapters")
    registry.register("cand", source, {"adapter_id": "cand"})
    registry.start_shadow("cand")
    now = utcnow()
    # Labels given after the posts were scored in shadow (the archive is read up to now).
    Archive(settings.feedback.dir).append(
        [
            label(1, S).model_copy(update={"reviewed_at": now - timedelta(minutes=5)}),
            label(2, U).model_copy(update={"reviewed_at": now - timedelta(minutes=4)}),
        ]
    )
    shadowed: list[ShadowRecord] = [record(1, C, S), record(2, U, U), record(3, S, S)]
    asyncio.run(publish(settings, [r.to_json() for r in shadowed] + [b"not a shadow record"]))

    for name, value in {
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "GUARDSTREAM_NAMESPACE": settings.namespace,
        "GUARDSTREAM_FEEDBACK_DIR": str(settings.feedback.dir),
        "GUARDSTREAM_ADAPTER_DIR": str(tmp_path / "adapters"),
        "GUARDSTREAM_MODEL": "tiny",
        "GUARDSTREAM_MODEL_CACHE_DIR": str(settings.model.cache_dir),
        "GUARDSTREAM_FEEDBACK_SHADOW_MIN_SAMPLES": "3",
        "GUARDSTREAM_FEEDBACK_SHADOW_MIN_LABELLED": "2",
        # approval before promotion: tests/unit/feedback/test_approval.py
        "GUARDSTREAM_FEEDBACK_AUTO_PROMOTE": "true",
        "GUARDSTREAM_FEEDBACK_MIN_JUDGES": "1",  # one reviewer's labels judge here
        "GUARDSTREAM_FEEDBACK_REVIEWER_CAP": "1",  # ... with no cap on the shadow gate's labels
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    looked = runner.invoke(app, ["feedback", "shadow-report"])
    assert looked.exit_code == 0, looked.output
    report = last_json(looked.stdout)
    assert (report["status"], report["candidate"]) == ("promote", "cand")
    metrics = report["metrics"]
    assert isinstance(metrics, dict)
    assert (metrics["shadowed"], metrics["labelled"]) == (3, 2)
    assert (metrics["serving_accuracy"], metrics["candidate_accuracy"]) == (0.5, 1.0)
    assert "1 records on the shadow topic are not shadow records" in looked.stderr
    assert registry.snapshot(fresh=True).shadow == {"*": "cand"}  # a report changes nothing

    ran = runner.invoke(app, ["feedback", "run"])
    assert ran.exit_code == 0, ran.output
    cycle = last_json(ran.stdout)
    shadow = cycle["shadow"]
    assert isinstance(shadow, dict)
    assert shadow["status"] == "promote"
    assert cycle["status"] == "skipped"  # two new labels are not enough to train again
    snapshot = registry.snapshot(fresh=True)
    assert (snapshot.serving, snapshot.shadow) == ({"*": "cand"}, {})
    assert registry.card("cand")["shadow"]["agreement"] == pytest.approx(2 / 3)
    assert registry.card("cand")["promoted"] is True
