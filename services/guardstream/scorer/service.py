"""The scorer consumer: score requests in, model decisions out, verdict cache filled.

Per batch: requests are validated against the contract and `max_text_chars` (bad ones to the
DLQ with the contract's reason), grouped by content key so equal
content is scored once, the cache is re-checked (another scorer may have just scored it), the
remaining keys are scored concurrently (vLLM batches them), verdicts are cached, and one
decision per request goes to its action topic. Offsets are committed after every decision is
acknowledged. Unusable model output is `controversial`, never `safe`. In a cascade
(`cascade_escalate_below`), verdicts below the threshold are neither cached nor decided: the
requests go to the escalations topic, acknowledged before the offsets move, for the larger
model's scorer. An engine failure is transient (the batch is retried, nothing skipped); a dead
engine ends the process. A request whose data Redis refuses, or that cannot become a valid
decision, is found by halving the batch (`runtime.loop.isolate`) and dead-lettered alone
(`store_rejected`, `unprocessable`); the rest are decided.

Shadow scoring: for a tenant whose registry lists a shadow candidate adapter, each freshly
scored content key (sampled by `shadow_sample_rate`) is scored again with the candidate in
the background, after its serving verdict exists, and the pair goes to `moderation.shadow.v1`
as a `ShadowRecord` — never to an action topic, the cache or the journal. It never holds up a
batch: at most `shadow_max_in_flight` run at once (more are skipped and counted), a failure is
logged and counted, and stopping waits briefly for what is running, then drops it (shadow
evidence is a sample, not a ledger).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import redis.exceptions
from aiokafka import AIOKafkaProducer

from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import (
    AuthorHistory,
    ContractError,
    Decision,
    LangSource,
    ScoreRequest,
    ShadowRecord,
    Source,
    utcnow,
    within_text_limit,
)
from guardstream.contracts.identity import PostIdentity
from guardstream.contracts.labels import LABEL_VERDICT
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.model.adapters import Adapter
from guardstream.policy import PolicyPack
from guardstream.runtime import tracing
from guardstream.runtime.faults import FaultPoints
from guardstream.runtime.loop import Record, Records, isolate, unusable
from guardstream.runtime.settings import Settings
from guardstream.scorer.engine import (
    INTERACTIVE,
    GuardEngine,
    RawAnswer,
    ScoringError,
    engine_priority,
)
from guardstream.scorer.output import GuardAnswer, label_confidence, parse_answer
from guardstream.scorer.prompt import messages_for
from guardstream.verdict.author_history import Authored
from guardstream.verdict.cache import CachedVerdict, VerdictKey
from guardstream.verdict.decisions import Origin, decide, model_reason, past_deadline
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.journal import journal_key
from guardstream.verdict.stores import Stores

log = logging.getLogger(__name__)

SHADOW_DRAIN_S = 10.0  # how long stopping waits for shadow scorings already running
# What Redis (or its client, encoding a value) refuses because of a record's values.
REJECTED_DATA: tuple[type[BaseException], ...] = (redis.exceptions.DataError, UnicodeError)


def shadow_sampled(content_key: str, rate: float) -> bool:
    """Whether `content_key` is scored in shadow: decided by the key (a uniform hash), so every
    replica and every retry agrees."""
    return rate >= 1.0 or int(content_key[:8], 16) < rate * 0x1_0000_0000


def _verdict(
    answer: GuardAnswer, raw: RawAnswer, model: str, adapter: str | None, at: datetime
) -> CachedVerdict:
    confidence = None
    # A label overruled by the parser (safe naming an unknown category) has no confidence of
    # its own: the verdict goes to review rather than being acted on with the label's.
    if answer.label is not None and answer.verdict is LABEL_VERDICT[answer.label]:
        confidence = label_confidence(answer.label, raw.label_logprobs)
    return CachedVerdict(
        verdict=answer.verdict,
        categories=answer.categories,
        confidence=None if confidence is None else round(confidence, 6),
        refusal=answer.refusal,
        input_truncated=raw.truncated,
        # An adapter trained with reasons gives its own rationale (cleaned and bounded by the
        # parser); otherwise, or for an unusable answer, the sentence saying what it labelled.
        reason=answer.rationale
        if answer.label is not None and answer.rationale
        else model_reason(answer.label, answer.categories, answer.problem),
        source=Source.MODEL,
        model=model,
        adapter=adapter,
        decided_at=at,
    )


class Scorer:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        stores: Stores,
        engine: GuardEngine,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._cache = stores.cache
        self._journal = stores.journal
        self._policies = stores.policies
        self._near = stores.near
        self._engine = engine
        self._adapters = stores.adapters
        self._history = stores.history
        self._faults = FaultPoints(settings.process.fault)
        self._in_flight: dict[str, asyncio.Future[CachedVerdict]] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._late_tasks: set[asyncio.Task[None]] = set()
        self._shadow_topic = TopicNames(settings.namespace)[Topic.SHADOW]
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "consumed",
                "scored",
                "coalesced",
                "cache_hit",
                "replayed",
                "unparseable",
                "truncated",
                "dlq",
                "escalated",
                "interactive",
                "interactive_refused",
                "past_deadline",
                "shadow_started",
                "shadow_scored",
                "shadow_skipped",
                "shadow_failed",
            ),
            0,
        )

    @property
    def adapter_generation(self) -> int | None:
        """The adapter registry generation the scorer serves from now (None: no registry)."""
        return self._adapters.generation if self._adapters is not None else None

    def _servable(self, request: ScoreRequest) -> ScoreRequest:
        """`request`, unless it names an adapter and this scorer has no adapter registry: no
        registry can list it before a restart, and retrying would hold up its partition for
        good, so it is dead-lettered (`unknown_adapter`)."""
        if request.adapter is not None and self._adapters is None:
            raise ContractError("unknown_adapter", "request names an adapter; no registry here")
        return request

    def _adapter(self, request: ScoreRequest) -> Adapter | None:
        """The adapter triage keyed the request with. One the registry does not (yet) list is
        a transient error: the registry file may not have reached this replica; the request is
        retried, never scored by another model under its key."""
        if request.adapter is None:
            return None
        found = self._adapters.get(request.adapter) if self._adapters is not None else None
        if found is None:
            raise TransientError(f"adapter {request.adapter!r} is not in the adapter registry")
        return found

    async def score(self, request: ScoreRequest) -> CachedVerdict:
        adapter = self._adapter(request)
        try:
            raw = await self._engine.assess(messages_for(request), request.content_key, adapter)
        except ScoringError as exc:
            raise TransientError(f"scoring failed: {exc}") from exc
        answer = parse_answer(raw.text, request.categories)
        if answer.label is None:
            self.counts["unparseable"] += 1
            log.warning(
                "unusable model output",
                extra={"post_id": request.post_id, "problem": answer.problem},
            )
        if raw.truncated:
            self.counts["truncated"] += 1
        return _verdict(answer, raw, self._engine.model_id, request.adapter, utcnow())

    async def handle(self, records: Records) -> None:
        """Score a batch; a request the stores refuse is found and dead-lettered alone."""
        await isolate(records, self._handle, self._rejected, self._dead_letter)

    @staticmethod
    def _rejected(exc: BaseException) -> ContractError | None:
        return unusable(exc, REJECTED_DATA)

    async def _dead_letter(self, record: Record, error: ContractError) -> None:
        emitter = Emitter(self._producer, self._settings, "scorer")
        await emitter.dead_letter(record, error)
        await emitter.flush()
        self.counts["dlq"] += 1
        self.counts["consumed"] += 1

    async def _handle(self, records: Records) -> None:
        emitter = Emitter(self._producer, self._settings, "scorer")
        requests: dict[str, ScoreRequest] = {}  # by journal key: a replayed event counts once
        dead = 0
        limit = self._settings.process.max_text_chars
        for record in records:
            try:
                request = self._servable(
                    within_text_limit(ScoreRequest.from_json(record.value), limit)
                )
            except ContractError as exc:
                await emitter.dead_letter(record, exc)
                dead += 1
                continue
            tracing.bind(record, request.post_event_id)  # its decision continues its trace
            requests.setdefault(
                journal_key(request.tenant, request.post_event_id, request.policy), request
            )

        await self._decide(requests, emitter)
        await emitter.flush()
        self.counts["dlq"] += dead
        self.counts["consumed"] += len(records)

    async def _decide(
        self,
        requests: dict[str, ScoreRequest],
        emitter: Emitter,
        deadline_s: float | None = None,
    ) -> dict[str, bytes]:
        """Decide `requests` (by journal key), as both doors do: the decisions are queued on
        `emitter` (the caller flushes) and returned by journal key, as sent (an earlier
        decision for a replayed event); an escalated request has none. With `deadline_s` (the
        interactive door), a key the model has not judged by then is decided `past_deadline`
        (its scoring goes on, and its verdict is cached when it comes)."""
        sent: dict[str, bytes] = {}
        recalled = await self._journal.recall_many(list(requests))
        for event in recalled:  # decided before (a replay): say the same thing again
            await emitter.decision(recalled[event])
            sent[event] = recalled[event]
            del requests[event]
        self.counts["replayed"] += len(recalled)

        # By content key within the tenant (or the pool of packs sharing model verdicts): the
        # model is asked once per content key, the cache once per tenant's key.
        by_key: dict[VerdictKey, list[ScoreRequest]] = defaultdict(list)
        for request in requests.values():
            shared = self._pack(request).share_model_verdicts
            by_key[VerdictKey(request.content_key, request.tenant, shared)].append(request)
        # Another scorer may have scored a key since triage looked: ask the cache again.
        cached = await self._cache.get_many(list(by_key))
        misses = [key for key in by_key if key not in cached]
        if deadline_s is None:
            scored = await asyncio.gather(*(self._score_once(by_key[key][0]) for key in misses))
            fresh = dict(zip(misses, scored, strict=True))
        else:
            fresh = await self._score_within(by_key, misses, deadline_s)
        # The model has answered, nothing of this batch is published or committed yet.
        self._faults.reach("scorer_scored")
        unsure = [key for key, verdict in fresh.items() if self._escalates(verdict)]
        for key, verdict in fresh.items():  # in the background: nothing here waits for it
            self._start_shadow(by_key[key][0], verdict, escalated=key in unsure)
        # Cascade: what this (small) model is unsure of goes to the larger model, undecided.
        for key in unsure:
            del fresh[key]
            for request in by_key.pop(key):
                await emitter.send(Topic.ESCALATIONS, request, key=key.content_key)
                self.counts["escalated"] += 1
        await self._cache.put_many(fresh)
        self.counts["cache_hit"] += sum(len(by_key[key]) for key in cached)

        ordered = [(key, request) for key, group in by_key.items() for request in group]
        figures = await self._figures([request for _, request in ordered])
        decisions = [
            self._decision(request, key, fresh, cached, deadline_s, figures)
            for key, request in ordered
        ]
        await self._index_near_duplicates([by_key[key][0] for key in fresh])
        sent.update(await emitter.decisions(self._journal, decisions))
        if self._history is not None:  # once per decision id: a retried batch counts once
            await self._history.record(
                [
                    Authored(request.author_id, decision)
                    for (_, request), decision in zip(ordered, decisions, strict=True)
                    if request.author_id is not None and self._pack(request).uses_author_history
                ]
            )
        return sent

    async def _figures(
        self, requests: Sequence[ScoreRequest]
    ) -> dict[tuple[str, str], AuthorHistory]:
        """The history of the requests' authors whose pack's rules read it."""
        if self._history is None:
            return {}
        wanted = [
            (r.tenant, r.author_id)
            for r in requests
            if r.author_id is not None and self._pack(r).uses_author_history
        ]
        return await self._history.figures_many(wanted, time.time()) if wanted else {}

    def _pack(self, request: ScoreRequest) -> PolicyPack:
        """The pack deciding `request`: as triage chose it, the arm of its author (else its
        post) when the pack runs an A/B experiment."""
        return self._policies.for_post(
            request.tenant, request.region, request.author_id or request.post_id
        )

    def _decision(
        self,
        request: ScoreRequest,
        key: VerdictKey,
        fresh: dict[VerdictKey, CachedVerdict],
        cached: dict[VerdictKey, CachedVerdict],
        deadline_s: float | None,
        figures: dict[tuple[str, str], AuthorHistory],
    ) -> Decision:
        pack = self._pack(request)
        history = figures.get((request.tenant, request.author_id or ""))
        # An older triage's request: its `lang` can only be the post's own.
        lang_source = request.lang_source or (LangSource.GIVEN if request.lang else None)
        entry = fresh.get(key) or cached.get(key)
        if entry is None:  # not judged within the interactive caller's deadline
            return past_deadline(
                pack,
                post_id=request.post_id,
                post_event_id=request.post_event_id,
                tenant=request.tenant,
                content_key=key.content_key,
                model=self._engine.model_id,
                adapter=request.adapter,
                deadline_s=deadline_s or 0.0,
                lang=request.lang,
                lang_source=lang_source,
            )
        return decide(
            entry,
            Origin.MODEL if key in fresh else Origin.CACHE,
            pack,
            post_id=request.post_id,
            post_event_id=request.post_event_id,
            tenant=request.tenant,
            content_key=key.content_key,
            lang=request.lang,
            lang_source=lang_source,
            history=history,
        )

    async def _score_within(
        self,
        by_key: dict[VerdictKey, list[ScoreRequest]],
        misses: list[VerdictKey],
        deadline_s: float,
    ) -> dict[VerdictKey, CachedVerdict]:
        """Score `misses` for at most `deadline_s`: what the model judged in time. The late
        ones keep scoring; their verdicts are cached and indexed when they come, for the next
        post with that content (no decision: this one is decided)."""
        tasks = {key: asyncio.ensure_future(self._score_once(by_key[key][0])) for key in misses}
        if tasks:
            await asyncio.wait(tasks.values(), timeout=deadline_s)
        fresh: dict[VerdictKey, CachedVerdict] = {}
        for key, task in tasks.items():
            if task.done():
                fresh[key] = task.result()  # a scoring error is raised here, as in a batch
            else:
                self.counts["past_deadline"] += 1
                self._keep_late(key, by_key[key][0], task)
        return fresh

    def _keep_late(
        self, key: VerdictKey, request: ScoreRequest, task: asyncio.Future[CachedVerdict]
    ) -> None:
        async def cache_when_done() -> None:
            try:
                verdict = await task
                if not self._escalates(verdict):
                    await self._cache.put_many({key: verdict})
                    await self._index_near_duplicates([request])
            except asyncio.CancelledError:
                raise
            # A late verdict is a bonus for the next post: whatever stops it is only logged.
            except Exception as exc:  # noqa: BLE001
                log.warning("late verdict not kept", extra={"error": type(exc).__name__})

        late = asyncio.create_task(cache_when_done())
        self._late_tasks.add(late)
        late.add_done_callback(self._late_tasks.discard)

    # --- the interactive door -------------------------------------------------------------
    async def interactive(self, body: bytes, deadline_s: float) -> Decision | None:
        """One score request from the API, decided exactly as the stream decides it (journal,
        cache, coalesced scoring, cache put, near-duplicate index, action topic and journal),
        at interactive engine priority and within `deadline_s`. Returns the decision sent, or
        None when the request was escalated (the larger model's tier decides it). Raises
        `ContractError` for a request the contract refuses (nothing is published then) and
        `TransientError` when the engine fails it."""
        request = within_text_limit(
            ScoreRequest.from_json(body), self._settings.process.max_text_chars
        )
        token = engine_priority.set(INTERACTIVE)
        try:
            emitter = Emitter(self._producer, self._settings, "scorer")
            key = journal_key(request.tenant, request.post_event_id, request.policy)
            sent = await self._decide({key: request}, emitter, deadline_s)
            await emitter.flush()
        finally:
            engine_priority.reset(token)
        self.counts["interactive"] += 1
        raw = sent.get(key)
        return Decision.from_json(raw) if raw is not None else None

    def _escalates(self, verdict: CachedVerdict) -> bool:
        threshold = self._settings.scorer.cascade_escalate_below
        if threshold is None:
            return False
        return verdict.confidence is None or verdict.confidence < threshold

    async def _index_near_duplicates(self, scored: list[ScoreRequest]) -> None:
        """Record freshly scored texts so later trivial variants can reuse their verdicts."""
        if self._near is None:
            return
        by_scope: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for request in scored:
            if request.near_scope is not None:
                by_scope[request.near_scope].append((request.content_key, request.text))
        await asyncio.gather(*(self._near.add_many(s, items) for s, items in by_scope.items()))

    async def _score_once(self, request: ScoreRequest) -> CachedVerdict:
        """Score a content key; concurrent batches asking for the same key share one call."""
        key = request.content_key
        running = self._in_flight.get(key)
        if running is None:
            running = asyncio.ensure_future(self.score(request))
            self._in_flight[key] = running
            running.add_done_callback(lambda _: self._in_flight.pop(key, None))
            self.counts["scored"] += 1
        else:
            self.counts["coalesced"] += 1
        return await asyncio.shield(running)

    # --- shadow scoring -------------------------------------------------------------------
    def _start_shadow(self, request: ScoreRequest, serving: CachedVerdict, escalated: bool) -> None:
        """Score `request` with its tenant's shadow candidate in the background, if it has one
        and there is room; nothing here can fail or delay the serving decision."""
        if self._adapters is None or self._settings.scorer.shadow_max_in_flight == 0:
            return
        if self._settings.scorer.source == "escalations":
            return  # the first tier shadowed this key already (its record says `escalated`)
        try:
            candidate = self._adapters.shadow_for(request.tenant)
        except (OSError, ValueError, KeyError) as exc:  # an unreadable registry: no shadow
            self.counts["shadow_failed"] += 1
            log.warning("shadow registry unreadable", extra={"error": type(exc).__name__})
            return
        if candidate is None or not shadow_sampled(
            request.content_key, self._settings.scorer.shadow_sample_rate
        ):
            return
        if len(self._shadow_tasks) >= self._settings.scorer.shadow_max_in_flight:
            self.counts["shadow_skipped"] += 1
            return
        task = asyncio.create_task(self._shadow(request, serving, candidate, escalated))
        self.counts["shadow_started"] += 1
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self, request: ScoreRequest, serving: CachedVerdict, candidate: Adapter, escalated: bool
    ) -> None:
        context = {
            "post_id": request.post_id,
            "content_key": request.content_key,
            "candidate": candidate.adapter_id,
        }
        try:
            raw = await self._engine.assess(
                messages_for(request),
                f"{request.content_key}/shadow/{candidate.adapter_id}",
                candidate,
            )
            shadow = _verdict(
                parse_answer(raw.text, request.categories),
                raw,
                self._engine.model_id,
                candidate.adapter_id,
                utcnow(),
            )
            record = ShadowRecord(
                event_id=f"shadow-{request.content_key}-{candidate.adapter_id}",
                produced_at=utcnow(),
                **PostIdentity.of(request).fields(),
                model=self._engine.model_id,
                serving_adapter=request.adapter,
                serving_verdict=serving.verdict,
                serving_categories=serving.categories,
                serving_confidence=serving.confidence,
                candidate_adapter=candidate.adapter_id,
                candidate_verdict=shadow.verdict,
                candidate_categories=shadow.categories,
                candidate_confidence=shadow.confidence,
                escalated=escalated,
                received_at=request.received_at,
                serving_decided_at=serving.decided_at,
                candidate_decided_at=shadow.decided_at,
            )
            await self._producer.send_and_wait(
                self._shadow_topic, record.to_json(), key=request.content_key.encode()
            )
        except asyncio.CancelledError:
            raise
        # Shadow scoring is evidence, not service: whatever breaks it (the engine, the
        # candidate's files, the broker) is counted and logged, and serving goes on.
        except Exception as exc:  # noqa: BLE001
            self.counts["shadow_failed"] += 1
            log.warning("shadow scoring failed", extra={**context, "error": type(exc).__name__})
            return
        self.counts["shadow_scored"] += 1

    async def drain_shadow(self, timeout_s: float = SHADOW_DRAIN_S) -> None:
        """At shutdown: let running shadow scorings finish for a moment, then drop them."""
        for late in list(self._late_tasks):  # late verdicts are a bonus: dropped at once
            late.cancel()
        if not self._shadow_tasks:
            return
        _done, pending = await asyncio.wait(set(self._shadow_tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.info("shadow scorings dropped at shutdown", extra={"dropped": len(pending)})
