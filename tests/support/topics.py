"""Records onto the real broker the way a producer in front of guardstream sends them: the one
`produce` the integration tests share."""

from __future__ import annotations

from aiokafka.structs import RecordMetadata

from guardstream.contracts.events import Envelope
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.runtime.kafka import make_producer
from guardstream.runtime.settings import Settings


async def produce(
    settings: Settings, *items: tuple[Topic, Envelope | bytes, str]
) -> list[RecordMetadata]:
    """Send each (topic, event or raw bytes, key) in order, each acknowledged before the next;
    returns where each landed. A key that is no valid UTF-8 (a lone surrogate) is sent with
    the replacement character, as a producer's client would have to."""
    names = TopicNames(settings.namespace)
    producer = make_producer(settings, client_id="test")
    await producer.start()
    try:
        landed = []
        for topic, event, key in items:
            raw = event if isinstance(event, bytes) else event.to_json()
            key_bytes = key.encode("utf-8", "replace")
            landed.append(await producer.send_and_wait(names[topic], raw, key=key_bytes))
        return landed
    finally:
        await producer.stop()
