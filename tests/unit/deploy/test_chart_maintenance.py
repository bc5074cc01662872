"""Retention in the Helm chart: the maintenance CronJob runs `guardstream maintenance` on its
schedule, never twice at once, with the database, the shared archive and the retention the
values set - read by the program's own settings parser - and it can be switched off."""

from __future__ import annotations

from typing import Any

import pytest

from guardstream.contracts.topics import Topic
from guardstream.runtime.kafka import topic_retention_ms
from tests.unit.deploy.test_chart_api import settings_from
from tests.unit.deploy.test_deploy import by_kind, pod_specs, production_values, render

pytestmark = pytest.mark.unit


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


@pytest.mark.parametrize("profile", ["default", "production"])
def test_maintenance_is_a_daily_cronjob_that_never_overlaps(profile: str) -> None:
    docs = render({} if profile == "default" else production_values())
    cron = by_kind(docs, "CronJob")["gs-maintenance"]
    assert cron["spec"]["schedule"] == "17 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = pod_specs(docs)["gs-maintenance"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == ["maintenance"]
    env = env_of(container)
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP", "REDIS_URL", "GUARDSTREAM_FEEDBACK_DIR"} <= set(env)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_retention_values_reach_every_pod_as_the_settings_read_them() -> None:
    docs = render(
        {
            "retention": {
                "postTextDays": 7,
                "auditDays": 90,
                "dlqDays": 3,
                "topicDays": "posts.v1=2",
                "receiptsDir": "/shared/receipts",
            },
            "maintenance": {"schedule": "0 * * * *"},
        }
    )
    assert by_kind(docs, "CronJob")["gs-maintenance"]["spec"]["schedule"] == "0 * * * *"
    pods = pod_specs(docs)
    for name in ("gs-maintenance", "gs-review", "gs-topics"):
        settings = settings_from(
            {k: v for k, v in env_of(pods[name]["containers"][0]).items() if v != "<secret>"}
        )
        kept = settings.retention
        assert (kept.post_text_days, kept.audit_days, kept.dlq_days) == (7, 90, 3), name
        assert str(kept.receipts_dir) == "/shared/receipts"
        retention = topic_retention_ms(settings)
        assert retention[Topic.DLQ] == 3 * 86_400_000 and retention[Topic.POSTS] == 2 * 86_400_000


def test_maintenance_can_be_switched_off_and_bad_retention_is_refused() -> None:
    docs = render({"maintenance": {"enabled": False}})
    assert "gs-maintenance" not in by_kind(docs, "CronJob")
    import helm_python as helm

    with pytest.raises(helm.HelmError):
        render({"retention": {"auditDays": 0}})
    with pytest.raises(helm.HelmError):
        render({"maintenance": {"schedule": "daily"}})
