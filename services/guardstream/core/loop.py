"""The consume → process → produce → commit loop every guardstream consumer runs.

Commit policy (per batch, records of all assigned partitions):

| outcome                     | what happens                                                   |
|-----------------------------|----------------------------------------------------------------|
| success                     | outputs acknowledged by the broker, then offsets committed      |
| permanent error (a record)  | the handler dead-letters that record; the batch goes on         |
| transient error             | nothing committed; the same batch retried with capped backoff   |
| shutdown (SIGTERM/SIGINT)   | the batch in hand finishes (or is abandoned mid-retry), no new   |
|                             | fetches, offsets of finished batches committed, exit 0          |
| rebalance / commit refused  | the commit is skipped; the new owner re-reads from the last     |
|                             | committed offset (at-least-once; decisions have stable ids)     |
| engine dead / bug           | the exception ends the process (non-zero); nothing committed    |
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from guardstream.core.kafka import last_offsets

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Records = Sequence[Record]
BatchHandler = Callable[[Records], Awaitable[None]]


class TransientError(Exception):
    """Retry the whole batch later; never skip it, never dead-letter it."""

    retriable: ClassVar[bool] = True


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


async def run_batches(
    consumer: AIOKafkaConsumer,
    handler: BatchHandler,
    stop: asyncio.Event,
    *,
    max_records: int,
    poll_timeout_ms: int,
    backoff_max_s: float,
    name: str,
) -> int:
    """Run until `stop` is set; returns how many records were committed."""
    committed = 0
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=poll_timeout_ms, max_records=max_records)
        records = [record for part in batches.values() for record in part]
        if not records:
            continue
        attempt = 0
        while True:
            try:
                await handler(records)
                break
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                attempt += 1
                delay = min(backoff_max_s, 0.1 * 2**attempt)
                log.warning(
                    "transient failure, retrying batch",
                    extra={
                        "service": name,
                        "attempt": attempt,
                        "delay_s": delay,
                        "error": type(exc).__name__,
                        "records": len(records),
                    },
                )
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    continue
                log.info("shutdown during retry: batch left uncommitted", extra={"service": name})
                return committed
        try:
            await consumer.commit(last_offsets(records))
            committed += len(records)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member; it re-reads from the last commit.
            log.warning(
                "commit refused after rebalance",
                extra={"service": name, "error": type(exc).__name__},
            )
    return committed
