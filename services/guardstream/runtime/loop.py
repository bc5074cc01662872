"""The consume → process → produce → commit runtime every guardstream consumer runs.

Batches are handled concurrently (up to an in-flight budget) and may finish out of order; the
committed offset of each partition is its contiguous done watermark (`OffsetTracker`), so a
crash never skips an undecided record. Commit policy — success, a permanent error, a record
the stores refuse, an output refused for good, a transient error, backpressure, shutdown,
rebalance, engine death — each row with what happens:
docs/concepts/delivery.md, "The consumer runtime" (the one copy of the table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError

from guardstream.contracts.errors import GuardstreamError
from guardstream.contracts.events import ContractError, describe_errors
from guardstream.runtime import metrics, tracing
from guardstream.runtime.faults import FaultPoints
from guardstream.runtime.offsets import OffsetTracker

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Records = Sequence[Record]
BatchHandler = Callable[[Records], Awaitable[None]]


# The retry policy of third-party exceptions that reach the loop raw, which are not ours to
# subclass: aiokafka's errors carry their own `retriable` (a produce or commit that may succeed
# later). Database and Redis errors never get here raw: the consumer that touches a store maps
# them to `TransientError` or a DLQ reason, where it knows which they are.
FOREIGN_RETRY_POLICY: tuple[tuple[type[BaseException], Callable[[BaseException], bool]], ...] = (
    (KafkaError, lambda exc: bool(getattr(exc, "retriable", False))),
)


def is_transient(exc: BaseException) -> bool:
    """Whether the batch that raised `exc` is retried: our errors say so themselves
    (`GuardstreamError.retriable`), third-party ones by `FOREIGN_RETRY_POLICY`; anything else
    is a bug and stops the process."""
    if isinstance(exc, GuardstreamError):
        return exc.retriable
    for kind, retriable in FOREIGN_RETRY_POLICY:
        if isinstance(exc, kind):
            return retriable(exc)
    return False


def unusable(
    exc: BaseException, store_errors: tuple[type[BaseException], ...] = ()
) -> ContractError | None:
    """The DLQ error when `exc` says one record's data cannot be used, else None (an
    infrastructure fault or a bug, which must not cost a record): a contract error, a derived
    event failing its own contract (`unprocessable`), or one of `store_errors`, the data
    errors of the consumer's stores (`store_rejected`). Details name types, never values."""
    if isinstance(exc, ContractError):
        return exc
    if isinstance(exc, ValidationError):
        return ContractError("unprocessable", describe_errors(exc))
    if store_errors and isinstance(exc, store_errors):
        state = getattr(exc, "sqlstate", None)
        where = f" (SQLSTATE {state})" if state else ""
        return ContractError("store_rejected", f"{type(exc).__name__}{where}")
    return None


async def isolate(
    records: Records,
    handle: BatchHandler,
    rejected: Callable[[BaseException], ContractError | None],
    dead_letter: Callable[[Record, ContractError], Awaitable[None]],
) -> None:
    """`handle(records)`; when it fails because of one record's data (`rejected` gives its
    DLQ error), the batch is halved and each half handled in order, down to the record that
    fails alone, which is dead-lettered. Handlers are idempotent (a transient retry redoes a
    whole batch too), so the halves redo what the failed attempt did. A record among n costs
    about 2·log2(n) more handler calls; any other error propagates."""
    try:
        await handle(records)
    except Exception as exc:
        error = rejected(exc)
        if error is None:
            raise
        if len(records) > 1:
            middle = len(records) // 2
            await isolate(records[:middle], handle, rejected, dead_letter)
            await isolate(records[middle:], handle, rejected, dead_letter)
            return
        (record,) = records
        log.warning(
            "record rejected by the data it holds; dead-lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": error.reason,
            },
        )
        await dead_letter(record, error)


@dataclass(frozen=True, slots=True)
class LoopConfig:
    name: str
    max_records: int
    max_in_flight: int
    poll_timeout_ms: int
    backoff_max_s: float
    drain_s: float
    fault: str | None = None
    group: str = ""  # consumer group (metric attribute and span attribute)
    commit_interval_s: float = 0.0  # finished work committed at most this often (0: each round)


@dataclass
class LoopReport:
    processed: int = 0  # records done (outputs acknowledged)
    retries: int = 0  # transient failures retried
    commits: int = 0  # successful offset commits
    drained: bool = True  # shutdown finished every in-flight batch within the budget
    in_flight: int = 0  # records fetched and not yet done, now (the backpressure gauge)
    peak_in_flight: int = 0  # its highest value: at most max_in_flight + max_records - 1


class BatchLoop:
    def __init__(self, consumer: AIOKafkaConsumer, handler: BatchHandler, config: LoopConfig):
        self._consumer = consumer
        self._handler = handler
        self._config = config
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._paused = False
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()  # set whenever a batch ends: budget may be free
        self.report = LoopReport()
        self._faults = FaultPoints(config.fault)

    # --- rebalance ---------------------------------------------------------------------------
    def listener(self) -> ConsumerRebalanceListener:
        loop = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                await loop._commit(only=set(revoked))
                loop._tracker.drop(revoked)
                loop._gauge()
                if revoked:
                    log.info(
                        "partitions revoked",
                        extra={"service": loop._config.name, "partitions": len(revoked)},
                    )

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                loop._paused = False  # a new assignment starts unpaused
                log.info(
                    "partitions assigned",
                    extra={"service": loop._config.name, "partitions": len(assigned)},
                )

        return _Listener()

    # --- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> LoopReport:
        cfg = self._config
        self._stop = stop
        next_commit = 0.0  # monotonic time of the next offset commit
        try:
            while not stop.is_set() and self._fatal is None:
                self._finished.clear()
                self._apply_backpressure()
                if self._paused:
                    # A fetch cannot return records now. Resume the moment a batch finishes
                    # rather than after a whole poll timeout: the fetcher restarts from an
                    # empty pipeline, and every millisecond here is idle CPU (bench/pipeline.py).
                    await _sleep_unless(self._finished, cfg.poll_timeout_ms / 1000)
                    self._apply_backpressure()
                batches = await self._consumer.getmany(
                    # Still polled while paused (a record-less poll): the group keeps us.
                    timeout_ms=0 if self._paused else cfg.poll_timeout_ms,
                    max_records=cfg.max_records,
                )
                if batches and not stop.is_set():
                    for tp, records in batches.items():
                        self._tracker.start(tp, (r.offset for r in records))
                        metrics.consumed.add(len(records), {"process": cfg.name, "topic": tp.topic})
                    self._gauge()
                    task = asyncio.create_task(self._work(batches))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                # Records fetched while stopping are neither started nor committed.
                if time.monotonic() >= next_commit:
                    await self._commit()
                    next_commit = time.monotonic() + cfg.commit_interval_s
                self._observe()
        finally:
            await self._drain()
            await self._commit()
        if self._fatal is not None:
            raise self._fatal
        return self.report

    def _apply_backpressure(self) -> None:
        over = self._tracker.in_flight() >= self._config.max_in_flight
        assignment = self._consumer.assignment()
        if over:
            # Re-applied every round: partitions assigned meanwhile start unpaused.
            self._consumer.pause(*assignment)
            if not self._paused:
                log.info(
                    "in-flight budget spent, partitions paused",
                    extra={"service": self._config.name, "in_flight": self._tracker.in_flight()},
                )
            self._paused = True
        elif self._paused:
            self._consumer.resume(*assignment)
            self._paused = False

    def _observe(self) -> None:
        """Refresh the gauges the metrics exporter reads: lag (highwater minus the done
        watermark) per partition, in-flight records, partitions held."""
        cfg = self._config
        assignment = self._consumer.assignment()
        lag: dict[tuple[tuple[str, str], ...], float] = {}
        for tp in assignment:
            highwater = self._consumer.highwater(tp)
            mark = self._tracker.watermark(tp)
            if highwater is None or mark is None:
                continue
            attrs = {"group": cfg.group, "topic": tp.topic, "partition": str(tp.partition)}
            lag[tuple(sorted(attrs.items()))] = max(0, highwater - mark)
        metrics.gauges.replace_where("guardstream.consumer.lag", lag, group=cfg.group)
        metrics.gauges.set(
            "guardstream.consumer.in_flight", self._tracker.in_flight(), process=cfg.name
        )
        metrics.gauges.set(
            "guardstream.consumer.assigned_partitions", len(assignment), process=cfg.name
        )

    async def _work(self, batches: dict[TopicPartition, list[Record]]) -> None:
        records = [record for part in batches.values() for record in part]
        started = time.monotonic()
        batch = tracing.BatchTrace(self._config.name, self._config.group, records)
        failure: BaseException | None = None
        done = False
        try:
            with tracing.batch_scope(batch):
                done = await self._handle(records, batch)
        except BaseException as exc:  # cancelled when the drain budget is spent
            failure = exc
            raise
        finally:
            batch.end(failure or (None if done else self._fatal), abandoned=not done)
            # Wakes a paused loop once this task yields: after the bookkeeping below (no awaits).
            self._finished.set()
        if not done:
            return
        self._faults.reach("after_publish")  # outputs acknowledged, offsets not yet committed
        for tp, part in batches.items():
            self._tracker.finish(tp, (r.offset for r in part))
        self._gauge()
        self.report.processed += len(records)
        attrs = {"process": self._config.name}
        metrics.batch_size.record(len(records), attrs)
        metrics.batch_duration.record(time.monotonic() - started, attrs)

    async def _handle(self, records: list[Record], batch: tracing.BatchTrace) -> bool:
        """Run the handler until it succeeds (True). False: it failed permanently (the loop
        stops) or shutdown came during a transient outage (left for redelivery)."""
        attempt = 0
        while True:
            try:
                await self._handler(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    log.exception(
                        "batch failed permanently; stopping",
                        extra={"service": self._config.name, "records": len(records)},
                    )
                    self._fatal = exc
                    return False
                attempt += 1
                self.report.retries += 1
                metrics.retries.add(1, {"process": self._config.name, "error": type(exc).__name__})
                batch.failed(exc, retrying=True)
                delay = min(self._config.backoff_max_s, 0.1 * 2**attempt)
                log.warning(
                    "transient failure, retrying batch",
                    extra={
                        "service": self._config.name,
                        "attempt": attempt,
                        "delay_s": delay,
                        "error": type(exc).__name__,
                        "records": len(records),
                    },
                )
                if self._stop.is_set() or await _sleep_unless(self._stop, delay):
                    # Shutting down mid-outage: leave the batch undone (redelivered later).
                    return False
            else:
                return True

    def _gauge(self) -> None:
        self.report.in_flight = self._tracker.in_flight()
        self.report.peak_in_flight = max(self.report.peak_in_flight, self.report.in_flight)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._config.drain_s)
        for task in pending:
            task.cancel()
        if pending:
            self.report.drained = False
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning(
                "drain budget spent; unfinished batches left for redelivery",
                extra={"service": self._config.name, "batches": len(pending)},
            )

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = self._tracker.to_commit()
        assignment = self._consumer.assignment()
        offsets = {
            tp: o for tp, o in offsets.items() if tp in assignment and (only is None or tp in only)
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The group moved on (rebalance or lost membership): the new owner re-reads from
            # the last successful commit. Never retried here: the generation is stale.
            log.warning(
                "commit refused", extra={"service": self._config.name, "error": type(exc).__name__}
            )
            return
        self._tracker.committed(offsets)
        self.report.commits += 1


async def _sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if `event` was set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
