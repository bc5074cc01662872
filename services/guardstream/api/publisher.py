"""The API's publishing: concurrent requests' records go to the broker together (group commit).

Every request still answers only once the broker has acknowledged its records (acks=all):
a decision answered is on its action topic. What changes is how the records travel. One
request's `Emitter` flushed on its own is one record batch per partition, and aiokafka holds a
partition's next batch until the one before it is drained, so under load the hits queued
behind each other one produce request at a time (and each paid a batch, a future and a
request of its own). Here a request hands its emitter to `GroupPublisher.flush`: while a flush
is on its way, the requests arriving meanwhile wait together, and the next flush sends all
their records at once (one batch per partition). An idle API sends at once (no linger); a busy
one waits at most for the flush in flight, then its own.

| the round's flush                          | each request of the round                    |
|--------------------------------------------|----------------------------------------------|
| acknowledged                               | answered                                     |
| refused for good (`OutputRejected`)        | each flushed alone: only its own fails (1)   |
| failed otherwise (`TransientError`)        | the same error (503 to the client)           |

(1) A size refusal stops a flush before anything is sent (`Emitter.flush` checks sizes first);
a broker's refusal may come after other partitions' batches were delivered: those records then
reach the broker twice, the same bytes (a harmless replay, as when a batch is retried).

A request cancelled while it waits (its client went away) does not stop the round: its
records are sent with the others.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from guardstream.runtime.kafka import OutputRejected
from guardstream.runtime.settings import Settings
from guardstream.verdict.emitter import Emitter

_Waiting = tuple[Emitter, "asyncio.Future[None]"]


class GroupPublisher:
    def __init__(self, producer: AIOKafkaProducer, settings: Settings, process: str) -> None:
        self._producer = producer
        self._settings = settings
        self._process = process
        self._waiting: list[_Waiting] = []
        self._running: asyncio.Task[None] | None = None
        self.counts: dict[str, int] = {"flushes": 0, "emitters": 0}

    def emitter(self) -> Emitter:
        """A request's own emitter, to queue its records on and then `flush` here."""
        return Emitter(self._producer, self._settings, self._process)

    async def flush(self, emitter: Emitter) -> None:
        """Return once the broker has `emitter`'s records (with those of the requests flushed
        alongside); raises what their flush raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((emitter, done))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain(), name="api-publish")
        await done

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            self.counts["flushes"] += 1
            self.counts["emitters"] += len(group)
            if len(group) == 1:
                await _settle(group[0])
                continue
            together = self.emitter()
            for emitter, _ in group:
                emitter.copy_to(together)
            try:
                await together.flush()
            except OutputRejected:
                # Someone's record is refused for good: each on its own, so only that one fails.
                await asyncio.gather(*(_settle(waiting) for waiting in group))
            except Exception as exc:  # noqa: BLE001 - every waiter gets it, as its own flush would
                for _, done in group:
                    _fail(done, exc)
            else:
                for _, done in group:
                    if not done.done():
                        done.set_result(None)


async def _settle(waiting: _Waiting) -> None:
    emitter, done = waiting
    try:
        await emitter.flush()
    except Exception as exc:  # noqa: BLE001 - handed to the request that waits for it
        _fail(done, exc)
    else:
        if not done.done():
            done.set_result(None)


def _fail(done: asyncio.Future[None], exc: Exception) -> None:
    if not done.done():
        done.set_exception(exc)
