"""The API's moderation, transport aside: request items in, one outcome per item out.

The same library as the Kafka door (`verdict.intake` validates and keys, `verdict.lookup`
finds what is known, `verdict.emitter` publishes): a hit is decided here and published to its
action topic and the journal exactly as triage publishes it; a miss is sent to the scorer's
interactive door (`scorer.door`), which decides it as the stream would, at interactive
priority, within the request's deadline (past it: `controversial` → review, never `safe`).

| what happens                                    | outcome                                  |
|-------------------------------------------------|------------------------------------------|
| the contract refuses the item                   | `Refused` (4xx) and a DLQ record (1)     |
| the scorer's door refuses it (its 422)          | `Refused` (4xx) and a DLQ record (1)     |
| decided before (same tenant, event id, pack)    | the earlier decision, published again    |
| cache or near-duplicate hit                     | its decision, published by the API      |
| miss: scorer decides                            | its decision (published by the scorer)   |
| miss: escalated to the larger model's tier      | `Escalated` (202): decided on the topics |
| scorer unreachable, pack fails closed           | `controversial` → review, source `rule`  |
| scorer unreachable, pack fails open             | `Unavailable` (503, Retry-After)         |
| scorer saturated (its 503) or its engine failed | `Unavailable` (503, Retry-After)         |

(1) origin topic `http:<route>`, consumer `guardstream-api`, the contract's reason.

A decision appears once per post event whichever door or retry produced it: the journal keeps
the first and every later attempt publishes that one again. The scorer publishes nothing for a
request it refuses: its refusal is dead-lettered here, once, with the post event the API made.

A contested decision (action `review`) is answered with a review reference beside the
decision's fields (`review_reference`): the review task it opened (the same id the review
queue gives it, `contracts.ids.review_task_id`) and where to poll for the final decision. It is
the API's answer only: the Decision on the action topics does not carry it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from guardstream.api.delivery import Watched
from guardstream.api.protocol import parse_json, post_event
from guardstream.contracts.errors import TransientError
from guardstream.contracts.events import REVIEW_ACTIONS, ContractError, Decision, utcnow
from guardstream.contracts.ids import review_task_id
from guardstream.policy import ScorerUnavailableMode
from guardstream.runtime.settings import Settings
from guardstream.verdict.emitter import Emitter
from guardstream.verdict.intake import Triaged, score_request_json
from guardstream.verdict.journal import journal_key
from guardstream.verdict.lookup import Lookup, authored, triager, unscored_item
from guardstream.verdict.stores import Stores

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/score"
DEADLINE_HEADER = "X-Guardstream-Deadline-Ms"
TRANSPORT_MARGIN_S = 2.0  # beyond the deadline, for the scorer's own answer to arrive


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Escalated:
    post_id: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    why: str


Outcome = Decision | Refused | Escalated | Unavailable


@dataclass(frozen=True, slots=True)
class _Scored:
    """What the scorer's door answered for one miss."""

    decision: Decision | None = None
    escalated: bool = False
    refused: Refused | None = None
    unavailable: str | None = None
    unreachable: bool = False  # no answer at all (not a refusal): the pack's outage rule applies
    waited_s: float = 0.0


def _origin(route: str, sequence: int, raw: bytes, at_ms: int) -> ConsumerRecord[bytes, bytes]:
    """The DLQ origin of a refused API item: the route in place of a topic, and in place of an
    offset this process's refusal sequence (microseconds since the epoch at its start, plus
    one per refusal), so every refused item is its own DLQ record."""
    return ConsumerRecord(
        topic=f"http:{route}",
        partition=0,
        offset=sequence,
        timestamp=at_ms,
        timestamp_type=0,
        key=None,
        value=raw,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=len(raw),
        headers=(),
    )


def review_reference(decision: Decision) -> dict[str, str] | None:
    """For a contested decision (sent to human review): its review task and where the final
    decision can be polled (`GET /v1/decisions/{post_id}`); None for any other."""
    if decision.action not in REVIEW_ACTIONS:
        return None
    return {
        "task_id": review_task_id(decision.tenant, decision.post_id, decision.policy),
        "poll": f"/v1/decisions/{quote(decision.post_id, safe='')}"
        f"?tenant={quote(decision.tenant, safe='')}",
    }


def decision_body(decision: Decision) -> bytes:
    """A decision as the API answers it: the Decision's JSON, and `review` for a contested one."""
    reference = review_reference(decision)
    if reference is None:
        return decision.to_json()
    return orjson.dumps({**orjson.loads(decision.to_json()), "review": reference})


def _written(item: object) -> bytes:
    """A batch item as JSON again, for its DLQ record (what was refused, as far as it goes)."""
    try:
        return orjson.dumps(item)
    except TypeError:
        return b""


class Moderator:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        stores: Stores,
        scorer: httpx.AsyncClient,
        *,
        model: str,
        watch: Callable[[Sequence[Watched]], Awaitable[None]] | None = None,
    ) -> None:
        """`watch` remembers the posts sent to review or escalated, whose final decision (a
        human's, the SLA timer's) is called back (`api.delivery`)."""
        self._settings = settings
        self._watch = watch
        self._producer = producer
        self._journal = stores.journal
        self._near = stores.near
        self._lookup = Lookup(stores.cache, stores.journal, stores.near, stores.history)
        self._history = stores.history
        self._triager = triager(settings, stores, model)
        self._scorer = scorer
        self._model = model
        self._deadline_s = settings.api.deadline_s
        self._sequence = time.time_ns() // 1000
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "refused",
                "replayed",
                "cache_hit",
                "near_hit",
                "scored",
                "escalated",
                "unscored",
                "unavailable",
                "unwatched",
            ),
            0,
        )

    async def refuse(self, raw: bytes, error: ContractError, route: str) -> None:
        """A request refused whole (not a batch, not a moderations request): to the DLQ."""
        emitter = Emitter(self._producer, self._settings, "api")
        await self._dead_letter(emitter, route, raw, error)
        await emitter.flush()
        self.counts["refused"] += 1

    async def _dead_letter(
        self, emitter: Emitter, route: str, raw: bytes, error: ContractError
    ) -> None:
        self._sequence += 1
        origin = _origin(route, self._sequence, raw, int(time.time() * 1000))
        try:
            await emitter.dead_letter(origin, error)
        except ValidationError:  # a detail the DLQ contract refuses: the reason still goes
            await emitter.dead_letter(origin, ContractError(error.reason, "detail withheld"))

    async def moderate(self, items: Sequence[object], route: str) -> list[Outcome]:
        """Decide each item (a parsed JSON value, or raw bytes still to parse)."""
        emitter = Emitter(self._producer, self._settings, "api")
        outcomes: list[Outcome | None] = [None] * len(items)
        keys: list[str | None] = [None] * len(items)
        accepted: dict[str, Triaged] = {}
        events: dict[str, bytes] = {}  # by journal key: the post event, for a DLQ record
        now = utcnow()
        for index, item in enumerate(items):
            raw = item if isinstance(item, bytes) else _written(item)
            try:
                value = parse_json(item) if isinstance(item, bytes) else item
                raw = post_event(value, now)
                triaged = self._triager.triage(raw)
            except ContractError as exc:
                await self._dead_letter(emitter, route, raw, exc)
                outcomes[index] = Refused(exc.reason, exc.detail)
                continue
            post = triaged.post
            key = journal_key(post.tenant, post.event_id, triaged.pack.ref)
            keys[index] = key
            accepted.setdefault(key, triaged)
            events.setdefault(key, raw)
        self.counts["requests"] += len(items)
        self.counts["refused"] += sum(isinstance(o, Refused) for o in outcomes)

        looked = await self._lookup.look(accepted)
        by_key: dict[str, Outcome] = {}
        for key, raw_decision in looked.recalled.items():
            await emitter.decision(raw_decision)
            by_key[key] = Decision.from_json(raw_decision)
        self.counts["replayed"] += len(looked.recalled)
        self.counts["cache_hit"] += looked.cache_hits
        self.counts["near_hit"] += looked.near_hits

        decisions = list(looked.decisions)
        pending: list[Watched] = []  # escalated: decided on the topics, perhaps contested
        scored = await asyncio.gather(*(self._score(item) for item in looked.misses))
        for item, answer in zip(looked.misses, scored, strict=True):
            key = journal_key(item.post.tenant, item.post.event_id, item.pack.ref)
            if answer.decision is not None:
                by_key[key] = answer.decision
                self.counts["scored"] += 1
            elif answer.escalated:
                by_key[key] = Escalated(item.post.post_id)
                pending.append(Watched(item.post.tenant, item.post.post_id, item.pack.ref))
                self.counts["escalated"] += 1
            elif answer.refused is not None:
                # The scorer published nothing for it: its DLQ record is the API's to write.
                refusal = ContractError(answer.refused.reason, answer.refused.detail)
                await self._dead_letter(emitter, route, events[key], refusal)
                by_key[key] = answer.refused
                self.counts["refused"] += 1
            elif (
                answer.unreachable
                and item.pack.scorer_unavailable is ScorerUnavailableMode.FAIL_CLOSED
            ):
                decisions.append(unscored_item(item, model=self._model, waited_s=answer.waited_s))
                self.counts["unscored"] += 1
            else:
                by_key[key] = Unavailable(answer.unavailable or "scorer unavailable")
                self.counts["unavailable"] += 1
        for key, sent in (await emitter.decisions(self._journal, decisions)).items():
            by_key[key] = Decision.from_json(sent)
        # The contested posts are watched while the decisions are acknowledged (one PostgreSQL
        # round trip less on a review answer). Should the publishing fail (503), a watch kept
        # for an unpublished decision calls back nothing: no final decision follows it.
        for result in await asyncio.gather(
            emitter.flush(), self._watch_contested(by_key.values(), pending), return_exceptions=True
        ):
            if isinstance(result, BaseException):
                raise result
        if self._history is not None:  # this door's own decisions (the scorer counts its own)
            await self._history.record(authored(accepted, decisions))
        return [
            outcome if outcome is not None else by_key[keys[index]]  # type: ignore[index]
            for index, outcome in enumerate(outcomes)
        ]

    async def _watch_contested(self, outcomes: Iterable[Outcome], escalated: list[Watched]) -> None:
        """Watch the posts sent to review and those escalated. A failure costs the callback,
        not the answer: logged and counted (`unwatched`)."""
        if self._watch is None:
            return
        watched = escalated + [
            Watched(o.tenant, o.post_id, o.policy)
            for o in outcomes
            if isinstance(o, Decision) and o.action in REVIEW_ACTIONS
        ]
        if not watched:
            return
        try:
            await self._watch(watched)
        except TransientError as exc:
            self.counts["unwatched"] += len(watched)
            log.warning("contested posts not watched: no callback", extra={"error": str(exc)})

    async def _score(self, item: Triaged) -> _Scored:
        """Ask the scorer's interactive door to decide `item`."""
        body = score_request_json(item, near_duplicates=self._near is not None)
        started = time.monotonic()
        try:
            response = await self._scorer.post(
                SCORE_PATH,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    DEADLINE_HEADER: str(int(self._deadline_s * 1000)),
                },
                timeout=self._deadline_s + TRANSPORT_MARGIN_S,
            )
        except httpx.HTTPError as exc:
            log.warning("scorer unreachable", extra={"error": type(exc).__name__})
            return _Scored(
                unavailable=f"scorer unreachable ({type(exc).__name__})",
                unreachable=True,
                waited_s=time.monotonic() - started,
            )
        if response.status_code == 200:
            return _Scored(decision=Decision.from_json(response.content))
        if response.status_code == 202:
            return _Scored(escalated=True)
        if response.status_code == 422:
            answer = response.json()
            return _Scored(refused=Refused(str(answer["reason"]), str(answer["detail"])))
        # Saturated, or its engine failed this request: back-pressure, the caller retries.
        return _Scored(unavailable=f"scorer answered {response.status_code}")
