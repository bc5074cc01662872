"""The triage consumer: posts in; cache-hit decisions, score requests and DLQ records out.

Per batch: every record is validated, given its policy pack and keyed; a replayed event gets
its earlier decision again (the journal); the verdict cache is asked once (MGET) for the whole
batch; exact hits, then near-duplicates of decided content (when the pack allows), become
decisions routed by the pack, as long as the verdict is younger than the pack's
`cache_ttl_s`; the rest become score requests keyed by content key, or, while the scorer is
unavailable (`guardstream.triage.watch`) and the pack fails closed, review decisions with
source `rule`; bad records go to the DLQ with their origin (reasons from the contract:
`invalid_json`, `invalid_schema`, `forbidden_character`, `text_too_long`, ...). A record whose
data Redis refuses, or that the code cannot turn into valid events, is found by halving the
batch (`runtime.loop.isolate`) and dead-lettered alone (`store_rejected`, `unprocessable`); the
rest of the batch is decided. Offsets are committed only after every produced record is
acknowledged (the whole commit table: docs/concepts/delivery.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

import redis.exceptions
from aiokafka import AIOKafkaProducer

from guardstream.contracts.events import ContractError, Decision, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.model.adapters import AdapterRegistry
from guardstream.policy import ScorerUnavailableMode
from guardstream.runtime import tracing
from guardstream.runtime.loop import Record, Records, isolate, unusable
from guardstream.runtime.settings import Settings
from guardstream.triage.logic import Triaged, Triager, score_request_json
from guardstream.triage.watch import ScorerWatch
from guardstream.verdict.cache import CachedVerdict, VerdictKey
from guardstream.verdict.decisions import Origin, decide, unscored
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.journal import journal_key
from guardstream.verdict.stores import Stores

log = logging.getLogger(__name__)

# What Redis (or its client, encoding a value) refuses because of a record's values.
REJECTED_DATA: tuple[type[BaseException], ...] = (redis.exceptions.DataError, UnicodeError)


def _adapter_for(adapters: AdapterRegistry | None) -> Callable[[str], str | None]:
    """Tenant → id of the adapter serving it now (re-read when the registry changes)."""
    if adapters is None:
        return lambda _tenant: None

    def serving(tenant: str) -> str | None:
        adapter = adapters.serving_for(tenant)
        return adapter.adapter_id if adapter is not None else None

    return serving


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
        self._cache = stores.cache
        self._journal = stores.journal
        self._near = stores.near
        self._adapters = stores.adapters
        self._watch = watch
        self._model = model
        self._score_topic = TopicNames(settings.namespace)[Topic.SCORE_REQUESTS]
        self._triager = Triager(
            max_text_chars=settings.process.max_text_chars,
            model=model,
            adapter_for=_adapter_for(stores.adapters),
            policies=stores.policies,
        )
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

        cached, recalled = await asyncio.gather(
            self._cache.get_many([item.verdict_key for item in accepted.values()]),
            self._journal.recall_many(list(accepted)),
        )
        for key in recalled:  # these events were decided before: say the same thing again
            await emitter.decision(recalled[key])
            del accepted[key]
        self.counts["replayed"] += len(recalled)

        decisions: list[Decision] = []
        misses: list[Triaged] = []
        stale: set[VerdictKey] = set()
        now = utcnow()
        for item in accepted.values():
            hit = cached.get(item.verdict_key)
            if hit is not None and not hit.fresh_for(item.pack.cache_ttl_s, now):
                # Older than this pack reuses: scored again. Dropped too, or the scorer's own
                # cache check would hand the same old verdict back.
                stale.add(item.verdict_key)
                hit = None
            if hit is None:
                misses.append(item)
                continue
            decisions.append(self._decide(hit, Origin.CACHE, item))
            self.counts["cache_hit"] += 1
        if stale:
            await self._cache.forget_many(list(stale))
            self.counts["stale"] += len(stale)

        near = await self._near_duplicates(misses, now)
        scorer_down = self.scorer_unavailable
        for item in misses:
            match = near.get(item.verdict_key)
            if match is not None:
                matched_key, entry = match
                decisions.append(self._decide(entry, Origin.NEAR, item, matched_key))
                self.counts["near_hit"] += 1
                continue
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
        self.counts["dlq"] += dead
        if self._watch is not None:
            for topic, partition, last_offset in emitter.published:
                if topic == self._score_topic:
                    self._watch.sent(partition, last_offset)
        self.counts["consumed"] += len(records)

    def _unscored(self, item: Triaged) -> Decision:
        post = item.post
        return unscored(
            item.pack,
            post_id=post.post_id,
            post_event_id=post.event_id,
            tenant=post.tenant,
            content_key=item.content_key,
            model=self._model,
            adapter=item.adapter,
            waited_s=self._watch.oldest_wait_s() if self._watch is not None else 0.0,
        )

    def _decide(
        self, entry: CachedVerdict, origin: Origin, item: Triaged, matched: str | None = None
    ) -> Decision:
        post = item.post
        return decide(
            entry,
            origin,
            item.pack,
            post_id=post.post_id,
            post_event_id=post.event_id,
            tenant=post.tenant,
            content_key=item.content_key,
            matched_content_key=matched,
        )

    async def _near_duplicates(
        self, misses: list[Triaged], now: datetime
    ) -> dict[VerdictKey, tuple[str, CachedVerdict]]:
        """For exact misses whose pack allows it: (matched key, its verdict) of a near-duplicate
        decided earlier, in the miss's scope (its tenant's, unless its pack shares verdicts).
        A match whose verdict has since expired, or is older than the pack reuses, is no
        match."""
        if self._near is None:
            return {}
        by_scope: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for item in misses:
            if item.pack.reuse_near_duplicates:
                by_scope[item.near_scope].append((item.content_key, item.text))
        found = await asyncio.gather(
            *(self._near.find_many(scope, items) for scope, items in by_scope.items())
        )
        # By scope too: two tenants' posts with one content key are looked up in two scopes.
        matches = {
            (scope, key): m.content_key
            for scope, part in zip(by_scope, found, strict=True)
            for key, m in part.items()
        }
        # The matched post's verdict as this miss's tenant may see it: its model verdict in the
        # miss's scope (the index scope already kept other tenants out), the tenant's own human
        # verdict over it.
        matched = {
            item.verdict_key: item.verdict_key._replace(content_key=found_key)
            for item in misses
            if (found_key := matches.get((item.near_scope, item.content_key))) is not None
        }
        verdicts = await self._cache.get_many(list(set(matched.values())))
        ttl = {item.verdict_key: item.pack.cache_ttl_s for item in misses}
        return {
            k: (m.content_key, verdicts[m])
            for k, m in matched.items()
            if m in verdicts and verdicts[m].fresh_for(ttl[k], now)
        }
