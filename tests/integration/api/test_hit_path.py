"""The API's lookup order (`Lookup.look(recall_misses_only=True)`) against real Redis: the
journal is asked about the cache's misses only, and a hit whose event was decided before
still gets its earlier decision, byte for byte, through the journal's settle."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from guardstream.contracts.events import Decision, Source, Verdict, utcnow
from guardstream.devtools.produce import new_post
from guardstream.runtime.kafka import make_producer
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import CachedVerdict
from guardstream.verdict.decisions import Origin
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.intake import Triaged
from guardstream.verdict.journal import journal_key
from guardstream.verdict.lookup import Lookup, decide_item, triager
from guardstream.verdict.stores import Stores

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def verdict(reason: str) -> CachedVerdict:
    return CachedVerdict(
        verdict=Verdict.SAFE,
        confidence=0.99,
        reason=reason,
        source=Source.MODEL,
        model="tiny",
        decided_at=utcnow(),
    )


async def test_a_replayed_hit_is_answered_with_its_earlier_decision_and_misses_are_recalled(
    settings: Settings,
) -> None:
    async with AsyncExitStack() as stack:
        stores = Stores.open(settings, stack, process="api")
        triage = triager(settings, stores, "tiny")
        items: dict[str, Triaged] = {}
        for text in ("cached, decided before", "cached, new event", "decided before", "new"):
            item = triage.triage(new_post(text).to_json())
            items[journal_key(item.post.tenant, item.post.event_id, item.pack.ref)] = item
        (replayed_hit, hit, replayed_miss, miss) = list(items)
        await stores.cache.put_many(
            {items[k].verdict_key: verdict("now") for k in (replayed_hit, hit)}
        )
        # What was decided earlier for two of the events (other bytes than a decision now).
        earlier = {
            k: decide_item(verdict("earlier"), Origin.CACHE, items[k]).to_json()
            for k in (replayed_hit, replayed_miss)
        }
        assert await stores.journal.settle_many(earlier) == earlier

        looked = await Lookup(stores.cache, stores.journal, stores.near).look(
            items, recall_misses_only=True
        )
        assert looked.recalled == {replayed_miss: earlier[replayed_miss]}
        assert [d.post_event_id for d in looked.decisions] == [
            items[replayed_hit].post.event_id,
            items[hit].post.event_id,
        ]
        assert looked.cache_hits == 2
        assert [m.post.event_id for m in looked.misses] == [items[miss].post.event_id]

        # The hits are settled: the replayed one sends (and answers) its earlier decision.
        producer = make_producer(settings, client_id="test-hits")
        await producer.start()
        stack.push_async_callback(producer.stop)
        emitter = Emitter(producer, settings, "api")
        sent = await emitter.decisions(stores.journal, looked.decisions)
        assert sent[replayed_hit] == earlier[replayed_hit]
        assert Decision.from_json(sent[hit]).reason.startswith("identical content")
        assert "now" in Decision.from_json(sent[hit]).reason
