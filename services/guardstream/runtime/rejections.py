"""A batch whose output the broker refused for good: the input whose output it was is found by
halving the batch (each half handled again; re-emission is idempotent) and sent to the DLQ
with reason `output_rejected`, an alert (`moderation.alerts.v1`, kind `output_rejected`) is
raised, and the consumer goes on with the rest. Every consuming process wraps its handler in
`isolating_rejections` (`guardstream.runtime.process`)."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from guardstream.contracts import ids
from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import Alert, AlertSeverity, ContractError, utcnow
from guardstream.contracts.ids import stable_id
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime import metrics
from guardstream.runtime.kafka import PERMANENT_PRODUCE_ERRORS, OutputRejected, dead_letter
from guardstream.runtime.loop import BatchHandler, Records, isolate
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)


OUTPUT_REJECTED = "output_rejected"  # DLQ reason and alert kind
REJECTIONS: tuple[type[Exception], ...] = (OutputRejected, *PERMANENT_PRODUCE_ERRORS)


def isolating_rejections(
    handler: BatchHandler, producer: AIOKafkaProducer, settings: Settings, process: str
) -> BatchHandler:
    """`handler`, with a batch whose output was refused for good (`OutputRejected`, or one of
    `PERMANENT_PRODUCE_ERRORS` raised while queueing) handled again in halves until the input
    whose output it was stands alone: that input goes to the DLQ and an alert is raised, the
    others are handled as usual. Transient errors pass through (the loop retries)."""
    topics = TopicNames(settings.namespace)
    group = settings.group_id(process)

    def refused(exc: BaseException) -> ContractError | None:
        if not isinstance(exc, REJECTIONS):
            return None  # transient or a bug: the loop's business
        name = type(exc.error if isinstance(exc, OutputRejected) else exc).__name__
        return ContractError(
            OUTPUT_REJECTED, f"{name}: an output of this record was refused by the broker"
        )

    async def reject(record: ConsumerRecord[bytes, bytes], problem: ContractError) -> None:
        name = problem.detail.split(":", 1)[0]
        sent = await _refused_or_sent(
            dead_letter(
                producer,
                topics[Topic.DLQ],
                record,
                problem,
                consumer=group,
                kafka=settings.kafka,
            )
        )
        if not sent:  # the DLQ record itself is too large for the broker: keep no payload
            await _delivered(
                dead_letter(
                    producer,
                    topics[Topic.DLQ],
                    record,
                    problem,
                    consumer=group,
                    kafka=settings.kafka,
                    max_payload=0,
                )
            )
        metrics.dead_letters.add(1, {"reason": OUTPUT_REJECTED, "consumer": group})
        alert_id = stable_id(
            ids.REJECTION_ALERT,
            OUTPUT_REJECTED,
            record.topic,
            record.partition,
            record.offset,
            group,
        )
        now = utcnow()
        alert = Alert(
            event_id=alert_id,
            produced_at=now,
            alert_id=alert_id,
            kind=OUTPUT_REJECTED,
            severity=AlertSeverity.CRITICAL,
            summary=(
                f"{group}: the broker refused an output of {record.topic}[{record.partition}]"
                f"@{record.offset} for good ({name}); the input is in the DLQ"
            ),
            labels={
                "consumer": group,
                "error": name,
                "origin_topic": record.topic,
                "origin_partition": str(record.partition),
                "origin_offset": str(record.offset),
            },
            raised_at=now,
        )
        await _delivered(
            producer.send(topics[Topic.ALERTS], alert.to_json(), key=alert_id.encode())
        )
        log.error(
            "output refused for good: input dead-lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": name,
                "consumer": group,
            },
        )

    async def handle(records: Records) -> None:
        await isolate(records, handler, refused, reject)  # the same halving as a store's refusal

    return handle


async def _refused_or_sent(sending: Any) -> bool:
    """Await a `producer.send` and its delivery: False if refused for good; transient
    failures raise `TransientError` (the loop retries the batch)."""
    try:
        await _delivered(sending)
    except OutputRejected:
        return False
    return True


async def _delivered(sending: Any) -> None:
    try:
        future = await sending
        await future
    except PERMANENT_PRODUCE_ERRORS as exc:
        raise OutputRejected(exc) from exc
    except Exception as exc:
        raise TransientError(f"delivery failed: {type(exc).__name__}") from exc
