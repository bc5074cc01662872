"""The triage consumer: posts in; cache-hit decisions, score requests and DLQ records out.

Per batch: every record is validated and keyed, the verdict cache is asked once (MGET) for
the whole batch, hits become decisions on their action topic, misses become score requests
keyed by content key, bad records go to the DLQ with their origin. Offsets are committed only
after every produced record is acknowledged (see `guardstream.core.loop` for the full table).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from guardstream.core.cache import VerdictCache
from guardstream.core.contracts import ContractError
from guardstream.core.decisions import decide
from guardstream.core.journal import DecisionJournal, journal_key
from guardstream.core.loop import Records
from guardstream.core.outbox import Outbox
from guardstream.core.settings import Settings
from guardstream.core.topics import Topic
from guardstream.triage.logic import Triaged, score_request, triage_record

log = logging.getLogger(__name__)


class Triage:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        cache: VerdictCache,
        journal: DecisionJournal,
        *,
        model: str,
        adapter: str | None = None,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._cache = cache
        self._journal = journal
        self._model = model
        self._adapter = adapter
        self.counts: dict[str, int] = {
            "consumed": 0,
            "cache_hit": 0,
            "scoring": 0,
            "dlq": 0,
            "replayed": 0,
            "duplicate_in_batch": 0,
        }

    async def handle(self, records: Records) -> None:
        outbox = Outbox(self._producer, self._settings, "triage")
        policy = self._settings.policy_version
        accepted: dict[str, Triaged] = {}  # by journal key: a replayed event counts once
        for record in records:
            try:
                item = triage_record(
                    record.value,
                    max_text_chars=self._settings.max_text_chars,
                    model=self._model,
                    adapter=self._adapter,
                )
            except ContractError as exc:
                await outbox.dead_letter(record, exc)
                self.counts["dlq"] += 1
                continue
            key = journal_key(item.post.event_id, policy)
            if key in accepted:
                self.counts["duplicate_in_batch"] += 1
                continue
            accepted[key] = item

        cached, recalled = await asyncio.gather(
            self._cache.get_many([item.content_key for item in accepted.values()]),
            self._journal.recall_many(list(accepted)),
        )
        decisions = []
        for key, item in accepted.items():
            if key in recalled:  # this event was decided before: say the same thing again
                await outbox.decision(recalled[key])
                self.counts["replayed"] += 1
                continue
            post = item.post
            hit = cached.get(item.content_key)
            if hit is None:
                request = score_request(item, policy)
                await outbox.send(Topic.SCORE_REQUESTS, request, item.content_key)
                self.counts["scoring"] += 1
                continue
            decisions.append(
                decide(
                    hit,
                    fresh=False,
                    post_id=post.post_id,
                    post_event_id=post.event_id,
                    tenant=post.tenant,
                    policy=policy,
                    content_key=item.content_key,
                )
            )
            self.counts["cache_hit"] += 1
        await outbox.decisions(self._journal, decisions)
        await outbox.flush()
        self.counts["consumed"] += len(records)
