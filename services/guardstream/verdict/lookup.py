"""What is already known about triaged posts: the lookup both doors make before the model.

For posts keyed by `verdict.intake` (by journal key, a replayed event once): a post event
decided before gets its earlier decision again (the journal); the verdict cache is asked once
(MGET) for all of them; exact hits, then near-duplicates of decided content (when the pack
allows), become decisions routed by the pack, as long as the verdict is younger than the
pack's `cache_ttl_s` (an older one is forgotten, so the scorer's own cache check cannot hand
it back); the rest are misses, for the caller to have scored. Triage (the Kafka door) and the
API (the HTTP door) both call this, so a post is decided the same way whichever door it came
through. Nothing is published here: the caller sends what it gets through its `Emitter`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from guardstream.contracts.events import AuthorHistory, Decision, utcnow
from guardstream.model.adapters import AdapterRegistry
from guardstream.runtime.settings import Settings
from guardstream.verdict.author_history import Authored, AuthorHistoryStore
from guardstream.verdict.cache import CachedVerdict, VerdictCache, VerdictKey
from guardstream.verdict.decisions import Origin, decide, unscored
from guardstream.verdict.intake import Triaged, Triager
from guardstream.verdict.journal import DecisionJournal, journal_key
from guardstream.verdict.neardup import NearDuplicateIndex
from guardstream.verdict.stores import Stores


def serving_adapters(adapters: AdapterRegistry | None) -> Callable[[str], str | None]:
    """Tenant → id of the adapter serving it now (re-read when the registry changes)."""
    if adapters is None:
        return lambda _tenant: None

    def serving(tenant: str) -> str | None:
        adapter = adapters.serving_for(tenant)
        return adapter.adapter_id if adapter is not None else None

    return serving


def triager(settings: Settings, stores: Stores, model: str) -> Triager:
    """The `Triager` of a door (triage's consumer, the API): same limits, packs and adapters."""
    return Triager(
        max_text_chars=settings.process.max_text_chars,
        model=model,
        adapter_for=serving_adapters(stores.adapters),
        policies=stores.policies,
    )


@dataclass(slots=True)
class Looked:
    """What the lookup found for a set of posts."""

    recalled: dict[str, bytes] = field(default_factory=dict)  # journal key → earlier decision
    decisions: list[Decision] = field(default_factory=list)  # cache and near-duplicate hits
    misses: list[Triaged] = field(default_factory=list)  # to be scored
    cache_hits: int = 0
    near_hits: int = 0
    stale: int = 0
    # (tenant, author) → history read for these posts (only where a pack's rules use it).
    figures: dict[tuple[str, str], AuthorHistory] = field(default_factory=dict)


def decide_item(
    entry: CachedVerdict,
    origin: Origin,
    item: Triaged,
    matched: str | None = None,
    history: AuthorHistory | None = None,
) -> Decision:
    """`decide` for a triaged post (`history`: its author's, when read)."""
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
        lang=item.lang,
        lang_source=item.lang_source,
        history=history,
    )


def unscored_item(item: Triaged, *, model: str, waited_s: float) -> Decision:
    """`unscored` for a triaged post the scorer cannot judge now (the pack fails closed)."""
    post = item.post
    return unscored(
        item.pack,
        post_id=post.post_id,
        post_event_id=post.event_id,
        tenant=post.tenant,
        content_key=item.content_key,
        model=model,
        adapter=item.adapter,
        waited_s=waited_s,
        lang=item.lang,
        lang_source=item.lang_source,
    )


def authors(items: Iterable[Triaged]) -> list[tuple[str, str]]:
    """(tenant, author) of the posts whose pack's rules read the author's history."""
    return [(i.post.tenant, i.post.author_id) for i in items if i.pack.uses_author_history]


class Lookup:
    def __init__(
        self,
        cache: VerdictCache,
        journal: DecisionJournal,
        near: NearDuplicateIndex | None,
        history: AuthorHistoryStore | None = None,
    ) -> None:
        self._cache = cache
        self._journal = journal
        self._near = near
        self._history = history

    async def _figures(self, items: Iterable[Triaged]) -> dict[tuple[str, str], AuthorHistory]:
        wanted = authors(items)
        if self._history is None or not wanted:
            return {}
        return await self._history.figures_many(wanted, time.time())

    async def look(self, accepted: dict[str, Triaged]) -> Looked:
        """Decide what is known of `accepted` (by journal key); the rest are `misses`."""
        looked = Looked()
        pending = dict(accepted)
        cached, recalled, figures = await asyncio.gather(
            self._cache.get_many([item.verdict_key for item in pending.values()]),
            self._journal.recall_many(list(pending)),
            self._figures(pending.values()),
        )
        looked.figures = figures
        for key in recalled:  # these events were decided before: say the same thing again
            looked.recalled[key] = recalled[key]
            del pending[key]

        stale: set[VerdictKey] = set()
        now = utcnow()
        misses: list[Triaged] = []
        for item in pending.values():
            hit = cached.get(item.verdict_key)
            if hit is not None and not hit.fresh_for(item.pack.cache_ttl_s, now):
                # Older than this pack reuses: scored again. Dropped too, or the scorer's own
                # cache check would hand the same old verdict back.
                stale.add(item.verdict_key)
                hit = None
            if hit is None:
                misses.append(item)
                continue
            looked.decisions.append(
                decide_item(hit, Origin.CACHE, item, history=figures.get(_author(item)))
            )
            looked.cache_hits += 1
        if stale:
            await self._cache.forget_many(list(stale))
            looked.stale = len(stale)

        near = await self._near_duplicates(misses, now)
        for item in misses:
            match = near.get(item.verdict_key)
            if match is not None:
                matched_key, entry = match
                looked.decisions.append(
                    decide_item(
                        entry, Origin.NEAR, item, matched_key, history=figures.get(_author(item))
                    )
                )
                looked.near_hits += 1
                continue
            looked.misses.append(item)
        return looked

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


def authored(accepted: Mapping[str, Triaged], decisions: Iterable[Decision]) -> list[Authored]:
    """Each decision with its post's author (`accepted`: the posts by journal key), for the
    author history: only where the post's pack reads it (history is kept for those tenants)."""
    items = ((accepted[journal_key(d.tenant, d.post_event_id, d.policy)], d) for d in decisions)
    return [Authored(i.post.author_id, d) for i, d in items if i.pack.uses_author_history]


def _author(item: Triaged) -> tuple[str, str]:
    return (item.post.tenant, item.post.author_id)
