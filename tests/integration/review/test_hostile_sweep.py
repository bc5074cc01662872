"""Every consumer group survives every record (issue 17), against the real broker, Redis and
PostgreSQL: triage and the scorer (tiny vLLM checkpoint) in this event loop as `serve()` runs
them, the review console's consumer in-process (`console`), the SLA timer as an OS process.

For each input topic (posts, score requests, review decisions, reviews, assignments, SLA
events) the corpus spoils every field of the topic's contract model, read from the model itself
so a field added later is spoilt too: Hypothesis draws values with control characters and lone
surrogates, oversized text, wrong types, odd timestamps and odd but valid text for each field,
and each id field also takes the id another tenant's record carries. Hypothesis adds records
with a field dropped or given twice, deep nesting and bytes that are no JSON. Every spoilt
record is followed by a good one, which sets every optional field of its model. Afterwards
every process is alive, every record is accounted for exactly once in every group that reads
it (decided / stored / entered, or one DLQ record naming that group and the record's topic,
partition and offset), and the good records' optional fields reached what was made of them.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import AwareDatetime

from guardstream.contracts.events import (
    ContractError,
    Decision,
    DlqRecord,
    Envelope,
    LangSource,
    Post,
    Review,
    ReviewAssignment,
    ScoreRequest,
    SlaEvent,
    utcnow,
)
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.review.consumer import ReviewConsumer
from guardstream.review.store.posts import PostText
from guardstream.runtime.loop import Record, Records, isolate
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.integration.conftest import in_process
from tests.integration.review.conftest import Console
from tests.support.oracle import ACTION_TOPICS, read_records
from tests.support.processes import Process, env_for
from tests.support.topics import produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LIMIT = 600  # max_text_chars here: oversized texts stay small records
NOW = utcnow().isoformat()
TENANT = "acme"
OTHER_TENANT = "umbrella"  # whose ids the corpus's records borrow

CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
FORBIDDEN = st.sampled_from(CONTROLS) | st.integers(0xD800, 0xDFFF).map(chr)
AROUND = st.text(max_size=6)
SPOILED = st.tuples(AROUND, FORBIDDEN, AROUND).map("".join)
WRONG_TYPE = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
OVERSIZED = st.integers(LIMIT + 1, 3 * LIMIT).map(lambda n: "长" * n)
ODD_TEXT = st.text(min_size=1, max_size=80)  # anything Unicode: may be valid
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
TIMESTAMPS = st.datetimes(timezones=OFFSETS).map(datetime.isoformat) | st.sampled_from(
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z"]
)
# What any one field may be given, whatever it is.
ANY_HOSTILE = st.one_of(SPOILED, WRONG_TYPE, OVERSIZED, ODD_TEXT, TIMESTAMPS)

# The contract model of each input topic: the fields the corpus spoils are this model's.
MODELS: dict[Topic, type[Envelope]] = {
    Topic.POSTS: Post,
    Topic.SCORE_REQUESTS: ScoreRequest,
    Topic.REVIEW: Decision,
    Topic.REVIEWS: Review,
    Topic.ASSIGNMENTS: ReviewAssignment,
    Topic.SLA_EVENTS: SlaEvent,
}


def fields_of(model: type[Envelope]) -> list[str]:
    """Every field of `model`, the envelope's and the optional ones included."""
    return list(model.model_fields)


def optional_fields(model: type[Envelope]) -> list[str]:
    return [name for name, info in model.model_fields.items() if not info.is_required()]


def timestamp_fields(model: type[Envelope]) -> list[str]:
    stamps = (AwareDatetime, AwareDatetime | None)
    return [name for name, info in model.model_fields.items() if info.annotation in stamps]


@dataclass(frozen=True)
class Hostile:
    """How one record is spoilt: `how` is set / drop / duplicate / nest / bytes / text."""

    how: str
    field: str = ""
    value: Any = None


def hostile(fields: list[str], timestamps: list[str]) -> st.SearchStrategy[Hostile]:
    """The mix: any field spoilt any way, and what is no field at all."""
    field = st.sampled_from(fields)
    return st.one_of(
        st.builds(Hostile, st.just("set"), field, SPOILED | WRONG_TYPE | OVERSIZED),
        st.builds(Hostile, st.just("set"), st.sampled_from(timestamps), TIMESTAMPS),
        st.builds(Hostile, st.just("drop"), field),
        st.builds(Hostile, st.just("duplicate"), field, SPOILED | WRONG_TYPE),
        st.builds(Hostile, st.just("nest"), st.just("meta"), st.integers(1, 1500)),
        st.builds(Hostile, st.just("bytes"), st.just(""), st.binary(max_size=40)),
        st.builds(Hostile, st.just("text"), st.just("text"), ODD_TEXT),
    )


def every_field(
    fields: list[str], values: st.SearchStrategy[Any] = ANY_HOSTILE
) -> st.SearchStrategy[list[Hostile]]:
    """One of `values` for each of `fields`, one record each: every field is drawn."""
    values = st.fixed_dictionaries({name: values for name in fields})
    return values.map(lambda drawn: [Hostile("set", name, drawn[name]) for name in fields])


def drawn(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """`n` examples of `strategy`, the same on every run (a corpus, not a property)."""
    corpus: list[Any] = []

    @hypothesis_settings(
        max_examples=n,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(item: Any) -> None:
        corpus.append(item)

    collect()
    return corpus


def render(doc: dict[str, Any], spoil: Hostile | None) -> bytes:
    """The record's bytes; json.dumps writes a lone surrogate as the escape a producer would."""
    if spoil is None:
        return json.dumps(doc).encode()
    if spoil.how == "bytes":
        return bytes(spoil.value)
    if spoil.how == "drop":
        return json.dumps({k: v for k, v in doc.items() if k != spoil.field}).encode()
    if spoil.how == "nest":
        depth = int(spoil.value)  # orjson refuses more than 1024 levels
        nested = b'"meta": ' + b"[" * depth + b"]" * depth
        return json.dumps({**doc, "meta": 0}).encode().replace(b'"meta": 0', nested)
    if spoil.how == "duplicate":  # the good value first, the hostile one last (orjson: wins)
        return (
            json.dumps(doc)[:-1] + f", {json.dumps(spoil.field)}: {json.dumps(spoil.value)}}}"
        ).encode()
    return json.dumps({**doc, spoil.field: spoil.value}).encode()


# The good records set every optional field of their model (a test holds them to it), but
# these: a score request naming an adapter needs an adapter registry the sweep does not load.
GOOD_LEAVES_OUT: dict[Topic, set[str]] = {Topic.SCORE_REQUESTS: {"adapter"}}


def post_doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    return {
        "schema_version": "1.0",
        "event_id": f"ev-{uuid.uuid4().hex}",
        "produced_at": NOW,
        "post_id": f"p-{uuid.uuid4().hex}",
        "tenant": tenant,
        "author_id": f"a-{n}",
        "text": f"good post number {n}: the weather is lovely",
        "kind": "response",
        "prompt": "how is the weather?",
        "lang": "en",
        "region": "EU",
        "created_at": NOW,
    }


def request_doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    return {
        "schema_version": "1.0",
        "event_id": f"sr-{uuid.uuid4().hex}",
        "produced_at": NOW,
        "post_id": f"p-{uuid.uuid4().hex}",
        "post_event_id": f"ev-{uuid.uuid4().hex}",
        "tenant": tenant,
        "kind": "response",
        "text": f"scored directly, number {n}",
        "prompt": "what happened?",
        "lang": "fr" if n % 2 else "und",
        "lang_source": "detected",
        "region": "EU",
        "content_key": uuid.uuid4().hex,
        "policy": "default@1",
        "received_at": NOW,
        "prompt_prefix": "Domain: general.",
        "near_scope": uuid.uuid4().hex,
        "author_id": f"a-{n}",
        "categories": [
            {"name": "Violent", "description": "violence against people"},
            {
                "name": "Financial Fraud",
                "description": "promises of guaranteed returns",
                "translations": {"zh": "金融欺诈"},
            },
        ],
    }


def decision_doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    ident = f"d-{uuid.uuid4().hex}"
    return {
        "schema_version": "1.0",
        "event_id": ident,
        "produced_at": NOW,
        "decision_id": ident,
        "post_id": f"p-{uuid.uuid4().hex}",
        "post_event_id": f"ev-{uuid.uuid4().hex}",
        "tenant": tenant,
        "verdict": "controversial",
        "action": "review",
        "categories": ["Politically Sensitive Topics"],
        "confidence": 0.5,
        "refusal": False,
        "input_truncated": n % 2 == 1,
        "reason": f"review decision number {n}",
        "rule": "controversial:review",
        "source": "model",
        "model": "tiny",
        "adapter": "lora-acme",
        "policy": "default@1",
        "content_key": uuid.uuid4().hex,
        "matched_content_key": uuid.uuid4().hex,
        "decided_at": NOW,
        "lang": "de" if n % 2 else "und",
        "lang_source": "detected" if n % 2 else "given",
        "author_history": {"unsafe_7d": n % 3, "confirmed_unsafe_30d": 1},
        "arm": "candidate" if n % 2 else "control",
    }


def review_doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    ident = f"rv-{uuid.uuid4().hex}"
    return {
        "schema_version": "1.0",
        "event_id": ident,
        "produced_at": NOW,
        "review_id": ident,
        "task_id": f"task-{n}",
        "post_id": f"p-{uuid.uuid4().hex}",
        "post_event_id": f"ev-{uuid.uuid4().hex}",
        "tenant": tenant,
        "decision_id": f"d-{uuid.uuid4().hex}",
        "content_key": uuid.uuid4().hex,
        "policy": "default@1",
        "outcome": "correct",
        "stage": "first",
        "verdict": "safe",
        "categories": [],
        "reason": "人工复核",
        "tags": ["test"],
        "reviewer": "rev-1",
        "model_verdict": "controversial",
        "model_confidence": 0.5,
        "model": "tiny",
        "adapter": "lora-acme",
        "refusal": False,
        "model_refusal": False,
        "late": False,
        "reviewed_at": NOW,
    }


def assignment_doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    return {
        "schema_version": "1.0",
        "event_id": f"as-{uuid.uuid4().hex}",
        "produced_at": NOW,
        "task_id": f"task-{n}",
        "post_id": f"p-{uuid.uuid4().hex}",
        "tenant": tenant,
        "event": "assigned",
        "reviewer": "rev-1",
        "at": NOW,
    }


def sla_event_doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    ident = f"s-{uuid.uuid4().hex}"
    return {
        "schema_version": "1.0",
        "event_id": ident,
        "produced_at": NOW,
        "sla_event_id": ident,
        "post_id": f"p-{uuid.uuid4().hex}",
        "tenant": tenant,
        "decision_id": f"d-{uuid.uuid4().hex}",
        "kind": "warning",
        "deadline": NOW,
        "downgrade_decision_id": f"d-{uuid.uuid4().hex}",
        "at": NOW,
    }


MAKERS: dict[Topic, Callable[..., dict[str, Any]]] = {
    Topic.POSTS: post_doc,
    Topic.SCORE_REQUESTS: request_doc,
    Topic.REVIEW: decision_doc,
    Topic.REVIEWS: review_doc,
    Topic.ASSIGNMENTS: assignment_doc,
    Topic.SLA_EVENTS: sla_event_doc,
}
# Another tenant's good record on each topic, sent first: its ids are the ones borrowed.
FOREIGN = {topic: make(-1, tenant=OTHER_TENANT) for topic, make in MAKERS.items()}
# Hostile values drawn for each field of each topic's model (`every_field`), and records of
# the mix (`hostile`) beside them.
PER_FIELD = 4
HOSTILE_PER_TOPIC = {
    Topic.POSTS: 30,
    Topic.SCORE_REQUESTS: 15,
    Topic.REVIEW: 20,
    Topic.REVIEWS: 10,
    Topic.ASSIGNMENTS: 10,
    Topic.SLA_EVENTS: 10,
}
# Inputs whose effect is not visible from outside: what the group takes is what the contract
# takes, so each record is dead-lettered by it exactly when its model refuses it.
BY_CONTRACT: dict[Topic, tuple[str, type[Envelope]]] = {
    Topic.REVIEWS: ("sla", Review),
    Topic.ASSIGNMENTS: ("sla", ReviewAssignment),
    Topic.SLA_EVENTS: ("review", SlaEvent),
}
# The issue's own cases, beside what Hypothesis draws.
KNOWN = [
    Hostile("set", "text", "NUL \x00 in text"),
    Hostile("set", "prompt", "NUL \x00 in prompt"),
    Hostile("set", "author_id", "a\x00"),
    Hostile("set", "text", "x" * (LIMIT + 1)),
]


@dataclass
class Sent:
    topic: str
    partition: int
    offset: int
    raw: bytes
    doc: dict[str, Any] | None  # what it says, when it is a JSON object
    good: bool  # one of the good records

    def field(self, name: str) -> str | None:
        value = (self.doc or {}).get(name)
        return value if isinstance(value, str) else None

    def ident(self, name: str) -> tuple[str | None, str | None]:
        """(tenant, `name`): ids are another tenant's to reuse, so they are one per tenant."""
        return self.field("tenant"), self.field(name)


@pytest.fixture
def settings(settings: Settings) -> Settings:  # the shared one, with a small text limit
    return settings.replace(process={"max_text_chars": LIMIT})


def borrowed_ids(topic: Topic) -> dict[str, str]:
    """The other tenant's ids (and tenant) on `topic`: whatever its good record holds that one
    of ours made alike does not."""
    ours = MAKERS[topic](-1)
    return {
        name: value
        for name, value in FOREIGN[topic].items()
        if isinstance(value, str) and value != ours[name]
    }


def spoils(topic: Topic) -> list[Hostile]:
    """How each spoilt record of `topic` is spoilt, in order."""
    model = MODELS[topic]
    fields = fields_of(model)
    per_field = [spoil for group in drawn(every_field(fields), PER_FIELD) for spoil in group]
    # Odd but valid text in each field too: what the contract lets through must be handled
    # (the second example: the first Hypothesis draws is the simplest, "0" in every field).
    per_field += [spoil for group in drawn(every_field(fields, ODD_TEXT), 2)[1:] for spoil in group]
    borrowed = [Hostile("set", name, value) for name, value in borrowed_ids(topic).items()]
    mix = drawn(hostile(fields, timestamp_fields(model)), HOSTILE_PER_TOPIC[topic])
    return (KNOWN if topic is Topic.POSTS else []) + per_field + borrowed + mix


def key_of(raw: bytes) -> str:
    """The key a producer gives the record: the post_id it carries (these topics are keyed by
    post_id), whatever a record that carries none as text is keyed by."""
    try:
        post_id = orjson.loads(raw).get("post_id")
    except (orjson.JSONDecodeError, AttributeError):
        return "hostile"
    return post_id if isinstance(post_id, str) else "hostile"


def corpus(topic: Topic) -> list[tuple[bytes, str, bool]]:
    """(record, key, good) in order: another tenant's good record, then each spoilt record
    followed by a good one."""
    records = [(render(FOREIGN[topic], None), FOREIGN[topic]["post_id"], True)]
    for n, spoil in enumerate(spoils(topic)):
        for doc, how in ((MAKERS[topic](n), spoil), (MAKERS[topic](n + 10_000), None)):
            raw = render(doc, how)
            records.append((raw, key_of(raw), how is None))
    return records


async def send(
    settings: Settings, topic: Topic, records: list[tuple[bytes, str, bool]]
) -> list[Sent]:
    landed = await produce(settings, *((topic, raw, key) for raw, key, _ in records))
    sent = []
    for (raw, _, good), meta in zip(records, landed, strict=True):
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        sent.append(
            Sent(
                meta.topic,
                meta.partition,
                meta.offset,
                raw,
                doc if isinstance(doc, dict) else None,
                good,
            )
        )
    return sent


@dataclass
class Outcome:
    dlq: Counter[tuple[str, str, int, int]]  # (group, topic, partition, offset)
    why: dict[tuple[str, str, int, int], str]  # its reason: detail
    decided: dict[tuple[str, str], dict[str, Decision]]  # (tenant, post_event_id) → by id
    texts: set[tuple[str, str]]  # (tenant, post_id) with a stored text
    tasks: dict[tuple[str, str], dict[str, Any]]  # (tenant, decision_id) → its task's row


async def outcome(console: Console) -> Outcome:
    settings = console.settings
    names = TopicNames(settings.namespace)
    dlq: Counter[tuple[str, str, int, int]] = Counter()
    why: dict[tuple[str, str, int, int], str] = {}
    for record in await read_records(settings, [names[Topic.DLQ]], timeout_s=30):
        dead = DlqRecord.from_json(record.value)
        key = (dead.consumer, dead.origin.topic, dead.origin.partition, dead.origin.offset)
        dlq[key] += 1
        why[key] = f"{dead.reason}: {dead.detail}"
    decided: dict[tuple[str, str], dict[str, Decision]] = {}
    actions = await read_records(settings, [names[t] for t in ACTION_TOPICS], timeout_s=30)
    for record in actions:  # actions.review also holds the corpus's own decisions
        try:
            decision = Decision.from_json(record.value)
        except ContractError:
            continue
        by_id = decided.setdefault((decision.tenant, decision.post_event_id), {})
        by_id[decision.decision_id] = decision
    rows = await console.sql("SELECT tenant, post_id FROM post_texts")
    texts = {(row["tenant"], row["post_id"]) for row in rows}
    rows = await console.sql("SELECT tenant, decision_id, lang, input_truncated FROM tasks")
    tasks = {(row["tenant"], row["decision_id"]): dict(row) for row in rows}
    return Outcome(dlq, why, decided, texts, tasks)


def unaccounted(got: Outcome, settings: Settings, sent: dict[Topic, list[Sent]]) -> list[str]:
    """Every (group, record) pair not accounted for exactly once, and every good record whose
    optional fields did not reach what was made of it; [] when all are."""
    group = settings.group_id
    problems = []

    def once(who: str, record: Sent, done: int) -> None:
        dead = got.dlq[(group(who), record.topic, record.partition, record.offset)]
        if dead + done != 1:
            where = (group(who), record.topic, record.partition, record.offset)
            problems.append(
                f"{who} {record.topic}/{record.partition}/{record.offset}: {dead} DLQ"
                f" ({got.why.get(where)}) + {done} done; sent {record.raw[:300]!r}"
            )

    def decisions(record: Sent, event_id: str) -> dict[str, Decision]:
        tenant, ident = record.ident(event_id)
        return got.decided.get((tenant or "", ident or ""), {})

    def carried(record: Sent, made: dict[str, Any], fields: dict[str, str]) -> None:
        """A good record's optional `fields` (its name: the name in `made`) arrived."""
        for theirs, ours in fields.items():
            sent_value = (record.doc or {}).get(theirs)
            if made.get(ours) != sent_value:
                problems.append(
                    f"{record.topic}/{record.partition}/{record.offset} {theirs}={sent_value!r}"
                    f" became {ours}={made.get(ours)!r}"
                )

    for record in sent[Topic.POSTS]:
        made = decisions(record, "event_id")
        once("triage", record, len(made))
        once("review", record, int(record.ident("post_id") in got.texts))
        if record.good:  # decided under its own lang, given
            for decision in made.values():
                carried(record, decision.model_dump(mode="json"), {"lang": "lang"})
                if decision.lang_source is not LangSource.GIVEN:
                    problems.append(f"posts/{record.offset}: lang {decision.lang_source}")
        # One contract, one limit: review refuses a post exactly when triage refuses it for
        # what it is (triage alone also looks at its normalised form).
        where = (record.topic, record.partition, record.offset)
        by_triage, by_review = (
            got.why.get((group("triage"), *where)),
            got.why.get((group("review"), *where)),
        )
        own = by_triage is not None and (
            by_triage.startswith("empty_text") or "normalised" in by_triage
        )
        if (by_triage is None or own) != (by_review is None):
            problems.append(
                f"posts {'/'.join(map(str, where))}: triage {by_triage}, review {by_review}"
            )
    for record in sent[Topic.SCORE_REQUESTS]:
        made = decisions(record, "post_event_id")
        once("scorer", record, len(made))
        if record.good:
            for decision in made.values():
                carried(
                    record,
                    decision.model_dump(mode="json"),
                    {"lang": "lang", "lang_source": "lang_source"},
                )
    for record in sent[Topic.REVIEW]:
        task = got.tasks.get(record.ident("decision_id"))
        once("review", record, int(task is not None))
        if record.good and task is not None:
            carried(record, task, {"lang": "lang", "input_truncated": "input_truncated"})
        # The SLA app takes what review takes: the same contract decides for both.
        where = (record.topic, record.partition, record.offset)
        sla, review = got.dlq[(group("sla"), *where)], got.dlq[(group("review"), *where)]
        if sla != review:
            reasons = [got.why.get((group(who), *where)) for who in ("sla", "review")]
            problems.append(
                f"sla {'/'.join(map(str, where))}: {sla} DLQ, review {review} ({reasons});"
                f" sent {record.raw[:300]!r}"
            )
    for topic, (who, model) in BY_CONTRACT.items():
        for record in sent[topic]:
            try:
                model.from_json(record.raw)
            except ContractError:
                once(who, record, 0)
            else:
                once(who, record, 1)
    return problems


def sla_items(process: Process) -> int:
    """Items in the SLA worker's table (its `/status`)."""
    url = f"http://127.0.0.1:{process.port}/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(orjson.loads(response.read())["items"])


@pytest.mark.parametrize("topic", list(MODELS), ids=str)
def test_the_corpus_draws_every_field_of_every_record_it_sends(topic: Topic) -> None:
    """The good records set every optional field of their model (a field the model gains
    fails here until the maker sets it), and the spoilt ones spoil every field, another
    tenant's ids among the values."""
    model = MODELS[topic]
    good = MAKERS[topic](0)
    assert set(good) <= set(model.model_fields), "a field the model does not have"
    unset = set(optional_fields(model)) - set(good) - GOOD_LEAVES_OUT.get(topic, set())
    assert not unset, f"{model.__name__}'s good record leaves out {sorted(unset)}"
    model.model_validate(good)
    spoilt = [s for s in spoils(topic) if s.how == "set"]
    for name in model.model_fields:
        values = [s.value for s in spoilt if s.field == name]
        assert len(values) >= PER_FIELD, f"{model.__name__}.{name} is drawn {len(values)} times"
    borrowed = borrowed_ids(topic)
    assert borrowed["tenant"] == OTHER_TENANT and "post_id" in borrowed
    assert all(Hostile("set", name, value) in spoilt for name, value in borrowed.items())


async def test_every_group_accounts_for_every_hostile_record_and_stays_alive(
    console: Console, engine: VllmGuardEngine, tmp_path: Path
) -> None:
    settings = console.settings
    env = env_for(
        settings,
        GUARDSTREAM_SLA_DATA_DIR=str(tmp_path / "sla-data"),
        GUARDSTREAM_SLA_SESSION_TIMEOUT_S="6",
    )
    sla = Process("sla", env, tmp_path)
    try:
        sla.start()
        await asyncio.to_thread(sla.wait_ready, 90)
        async with in_process(settings, engine, "triage", "scorer") as pipeline:
            sent = {topic: await send(settings, topic, corpus(topic)) for topic in MAKERS}
            deadline = asyncio.get_running_loop().time() + 240
            while True:
                problems = unaccounted(await outcome(console), settings, sent)
                if not problems or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(2)
            if problems:
                pytest.fail("\n".join([f"{len(problems)} problems:", *problems[:40]]))
            for name, handler in pipeline.handlers.items():
                assert handler.counts["dlq"] > 0, name
        assert sla.proc is not None and sla.proc.poll() is None, sla.log()
        assert await asyncio.to_thread(sla_items, sla) > 0
        assert console.review.consumer.counts["dlq"] > 0
        async with console.client() as http:
            assert (await http.get("/readyz")).status_code == 200
    finally:
        sla.stop()


async def test_nul_and_oversized_posts_cost_review_only_themselves(console: Console) -> None:
    """The issue's case: posts valid under the old contract with U+0000 in text, prompt or
    author_id, and a text over `max_text_chars`, reach the review consumer directly, between
    good posts. They go to the DLQ with their reason; the good ones are stored; it stays up."""
    settings = console.settings
    good = [post_doc(n) for n in range(4)]
    bad = [
        ({**post_doc(10), "text": "a\x00b"}, "forbidden_character"),
        ({**post_doc(11), "prompt": "q\x00"}, "forbidden_character"),
        ({**post_doc(12), "author_id": "\x00"}, "forbidden_character"),
        ({**post_doc(13), "text": "长" * (LIMIT + 1)}, "text_too_long"),
    ]
    records = []
    for n, (doc, _) in enumerate(bad):
        records += [
            (render(good[n], None), good[n]["post_id"], True),
            (render(doc, None), doc["post_id"], False),
        ]
    sent = await send(settings, Topic.POSTS, records)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        got = await outcome(console)
        dead = {k: n for k, n in got.dlq.items() if k[0] == settings.group_id("review")}
        stored = {(d["tenant"], d["post_id"]) for d in good} <= got.texts
        if (stored and len(dead) == len(bad)) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert stored
    assert not got.texts & {(doc["tenant"], doc["post_id"]) for doc, _ in bad}
    bad_records = sent[1::2]
    assert dead == {
        (settings.group_id("review"), r.topic, r.partition, r.offset): 1 for r in bad_records
    }
    reasons = sorted(
        DlqRecord.from_json(r.value).reason
        for r in await read_records(settings, [TopicNames(settings.namespace)[Topic.DLQ]])
    )
    assert reasons == sorted(reason for _, reason in bad)
    async with console.client() as http:
        assert (await http.get("/readyz")).status_code == 200


async def test_a_value_postgresql_refuses_costs_only_its_record(console: Console) -> None:
    """Behind the contract, the database is the last judge: a batch PostgreSQL refuses for one
    record's value (U+0000: CharacterNotInRepertoireError) is halved down to that record, the
    others are stored, and it alone is dead-lettered `store_rejected`."""
    store = console.review.services.store
    texts = {
        offset: PostText(
            post_id=f"p-{uuid.uuid4().hex}",
            tenant="acme",
            kind="prompt",
            text="NUL \x00" if offset in (2, 5) else f"text {offset}",
            prompt=None,
        )
        for offset in range(8)
    }
    records = [
        ConsumerRecord("posts", 0, offset, 0, 0, None, b"{}", None, 0, 2, []) for offset in texts
    ]

    async def save(batch: Records) -> None:
        await store.posts.save([texts[r.offset] for r in batch])

    dead: list[tuple[int, str, str]] = []

    async def dead_letter(record: Record, error: ContractError) -> None:
        dead.append((record.offset, error.reason, error.detail))

    await isolate(records, save, ReviewConsumer._rejected, dead_letter)
    assert [(o, r) for o, r, _ in dead] == [(2, "store_rejected"), (5, "store_rejected")]
    assert all("CharacterNotInRepertoireError" in detail for _, _, detail in dead)
    stored = {row["post_id"] for row in await console.sql("SELECT post_id FROM post_texts")}
    assert stored >= {t.post_id for o, t in texts.items() if o not in (2, 5)}
    assert not stored & {texts[2].post_id, texts[5].post_id}
