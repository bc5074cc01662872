"""The triage consumer: posts in; cache-hit decisions, score requests and DLQ records out.

Per batch: every record is validated, given its policy pack and keyed (`verdict.intake`); what
is already known is looked up as the API looks it up (`verdict.lookup`: a replayed event gets
its earlier decision again, the verdict cache is asked once for the whole batch, exact hits,
then near-duplicates of decided content, become decisions routed by the pack while younger
than the pack's `cache_ttl_s`); the rest become score requests keyed by content key, or,
while the scorer is unavailable (`guardstream.triage.watch`) and the pack fails closed, review
decisions with source `rule`; bad records go to the DLQ with their origin (reasons from the
contract: `invalid_json`, `invalid_schema`, `forbidden_character`, `text_too_long`, ...). A
record whose data Redis refuses, or that the code cannot turn into valid events, is found by
halving the batch (`runtime.loop.isolate`) and dead-lettered alone (`store_rejected`,
`unprocessable`); the rest of the batch is decided. Offsets are committed only after every
produced record is acknowledged (the whole commit table: docs/concepts/delivery.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import redis.exceptions
from aiokafka import AIOKafkaProducer

from guardstream.contracts.events import ContractError, Decision
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.policy import ScorerUnavailableMode
from guardstream.runtime import tracing
from guardstream.runtime.loop import Record, Records, isolate, unusable
from guardstream.runtime.settings import Settings
from guardstream.triage.watch import ScorerWatch
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.intake import Triaged, score_request_json
from guardstream.verdict.journal import journal_key
from guardstream.verdict.language import language_label
from guardstream.verdict.lookup import Lookup, authored, triager, unscored_item
from guardstream.verdict.stores import Stores

log = logging.getLogger(__name__)

# What Redis (or its client, encoding a value) refuses because of a record's values.
REJECTED_DATA: tuple[type[BaseException], ...] = (redis.exceptions.DataError, UnicodeError)


class Triage:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        stores: Stores,
        *,
        model: str,
        watch: ScorerWatch | None = None,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._journal = stores.journal
        self._near = stores.near
        self._lookup = Lookup(stores.cache, stores.journal, stores.near, stores.history)
        self._history = stores.history
        self._adapters = stores.adapters
        self._watch = watch
        self._model = model
        self._score_topic = TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]
        self._triager = triager(settings, stores, model)
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "consumed",
                "cache_hit",
                "near_hit",
                "scoring",
                "dlq",
                "replayed",
                "duplicate_in_batch",
                "stale",
                "unscored",
            ),
            0,
        )
        # Posts by (language label, "given" | "detected"): bounded by the detector's language
        # set (`verdict.language.language_label`), so it can be a metric.
        self.languages: defaultdict[tuple[str, str], int] = defaultdict(int)

    @property
    def adapter_generation(self) -> int | None:
        """The adapter registry generation triage keys requests from now (None: no registry)."""
        return self._adapters.generation if self._adapters is not None else None

    @property
    def scorer_unavailable(self) -> bool:
        """What the scorer watch says now (False without one)."""
        return self._watch is not None and self._watch.unavailable()

    async def handle(self, records: Records) -> None:
        """Decide a batch; a record the stores refuse is found and dead-lettered alone."""
        await isolate(records, self._handle, self._rejected, self._dead_letter)

    @staticmethod
    def _rejected(exc: BaseException) -> ContractError | None:
        return unusable(exc, REJECTED_DATA)

    async def _dead_letter(self, record: Record, error: ContractError) -> None:
        emitter = Emitter(self._producer, self._settings, "triage")
        await emitter.dead_letter(record, error)
        await emitter.flush()
        self.counts["dlq"] += 1
        self.counts["consumed"] += 1

    async def _handle(self, records: Records) -> None:
        emitter = Emitter(self._producer, self._settings, "triage")
        accepted: dict[str, Triaged] = {}  # by journal key: a replayed event counts once
        languages = self._triager.languages
        dead = 0
        for record in records:
            try:
                item = self._triager.triage(record.value)
            except ContractError as exc:
                await emitter.dead_letter(record, exc)
                dead += 1
                continue
            tracing.bind(record, item.post.event_id)  # its outputs continue its trace
            key = journal_key(item.post.tenant, item.post.event_id, item.pack.ref)
            if key in accepted:
                self.counts["duplicate_in_batch"] += 1
                continue
            accepted[key] = item
            self.languages[(language_label(item.lang, languages), item.lang_source.value)] += 1

        looked = await self._lookup.look(accepted)
        for raw in looked.recalled.values():  # decided before: say the same thing again
            await emitter.decision(raw)
        self.counts["replayed"] += len(looked.recalled)
        self.counts["cache_hit"] += looked.cache_hits
        self.counts["stale"] += looked.stale
        self.counts["near_hit"] += looked.near_hits

        decisions = looked.decisions
        scorer_down = self.scorer_unavailable
        for item in looked.misses:
            if scorer_down and item.pack.scorer_unavailable is ScorerUnavailableMode.FAIL_CLOSED:
                decisions.append(self._unscored(item))
                self.counts["unscored"] += 1
                continue
            request = score_request_json(item, near_duplicates=self._near is not None)
            await emitter.send_json(
                Topic.SCORE_REQUESTS, request, item.content_key, item.post.event_id
            )
            self.counts["scoring"] += 1
        await emitter.decisions(self._journal, decisions)
        await emitter.flush()
        if self._history is not None:  # once per decision id: a retried batch counts once
            await self._history.record(authored(accepted, decisions))
        self.counts["dlq"] += dead
        if self._watch is not None:
            for topic, partition, last_offset in emitter.published:
                if topic == self._score_topic:
                    self._watch.sent(partition, last_offset)
        self.counts["consumed"] += len(records)

    def _unscored(self, item: Triaged) -> Decision:
        waited = self._watch.oldest_wait_s() if self._watch is not None else 0.0
        return unscored_item(item, model=self._model, waited_s=waited)
