"""Reading the shadow topic back (`moderation.shadow.v1`) for the shadow evaluation.

The whole topic, from each partition's start to its end at the moment of reading, without a
consumer group (the evaluation is a read, not a consumption: every run sees everything still
retained). A record that is not a `ShadowRecord` is counted and logged by position, never
silently skipped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from guardstream.contracts.events import ContractError, ShadowRecord
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import client_kwargs
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ShadowLog:
    records: list[ShadowRecord] = field(default_factory=list)
    invalid: int = 0


async def read_shadow_log(settings: Settings, timeout_s: float = 60) -> ShadowLog:
    topic = TopicNames(settings.namespace)[Topic.SHADOW]
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    found = ShadowLog()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return found  # no topic yet: nothing was ever shadowed
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout_s):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    for record in batch:
                        if record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                            continue  # written after the read began: the next run sees it
                        try:
                            found.records.append(ShadowRecord.from_json(record.value))
                        except ContractError as exc:
                            found.invalid += 1
                            log.warning(
                                "not a shadow record",
                                extra={
                                    "topic": record.topic,
                                    "partition": record.partition,
                                    "offset": record.offset,
                                    "reason": exc.reason,
                                },
                            )
    finally:
        await consumer.stop()
    return found
