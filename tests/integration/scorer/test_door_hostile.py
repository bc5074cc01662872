"""Hostile requests at the scorer's interactive door (`runtime.jsonhttp` and `POST /v1/score`),
written as raw bytes on a socket: Hypothesis draws request lines, headers (NUL and control
characters, missing, lying, repeated or non-ASCII `Content-Length`, chunked, hostile deadline
headers), bodies (no JSON, JSON of every shape, score requests with hostile values in every
field, over the size limit). Every one is answered with one well-formed HTTP response whose
body is JSON: a 4xx with a reason, or a decision; never a 5xx, a dropped connection or a hang;
and the door serves the next request, on a new connection and on a kept-alive one. Real
broker, Redis and the tiny checkpoint on vLLM CPU behind the door."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from guardstream.contracts.events import Decision
from guardstream.devtools.produce import new_post
from guardstream.policy import load_registry
from guardstream.runtime.settings import Settings
from guardstream.scorer.door import SCORE_PATH
from guardstream.scorer.vllm_engine import VllmGuardEngine
from guardstream.verdict.intake import score_request_json, triage_record
from tests.conftest import free_port, wait_for_port
from tests.integration.conftest import in_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LIMIT = 600  # max_text_chars
ANSWER_S = 120.0  # a decision on a loaded machine; a hang is anything past it
DECIDED = {200, 202}
REFUSED = {400, 404, 405, 408, 411, 413, 422, 431}


def valid_body(settings: Settings, model: str, text: str) -> bytes:
    item = triage_record(
        new_post(text).to_json(),
        max_text_chars=settings.process.max_text_chars,
        model=model,
        adapter=None,
        policies=load_registry(None),
    )
    return score_request_json(item, near_duplicates=True)


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.characters(codec=None, categories=None), max_size=30),
        st.text(alphabet="\x00\x01\x1b\u200b\ud800\udfff\ufeffa", max_size=30),
        st.just("a" * (LIMIT + 1)),
        st.just(""),
    )


def json_values() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        hostile_text(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=5,
    )


def bodies(valid: bytes) -> st.SearchStrategy[bytes]:
    template = orjson.loads(valid)

    def hostile_field(field_and_value: tuple[str, object]) -> bytes:
        name, value = field_and_value
        # `json.dumps` writes lone surrogates as `\\udXXX` escapes, as a hostile client would.
        return json.dumps({**template, name: value}).encode()

    def without(name: str) -> bytes:
        return orjson.dumps({k: v for k, v in template.items() if k != name})

    return st.one_of(
        st.just(valid),
        st.tuples(st.sampled_from(sorted(template)), json_values()).map(hostile_field),
        st.sampled_from(sorted(template)).map(without),
        json_values().map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        st.just(b"{" * 5000),
        st.just(b'{"text": "' + b"a" * 2_000_000),
    )


LINES = [
    b"POST /v1/score HTTP/1.1",
    b"POST /v1/score HTTP/1.0",
    b"POST /v1/score?deadline=1 HTTP/1.1",
    b"GET /v1/score HTTP/1.1",
    b"POST /v1/nothing HTTP/1.1",
    b"POST /v1/score HTTP/2.0",
    b"POST  /v1/score HTTP/1.1",
    b"POST /v1/score",
    b"PRI * HTTP/2.0",
    b"POST /v1/\x00score HTTP/1.1",
    b"\x00\x01\x02",
    b"",
    b"POST /" + b"a" * 70_000 + b" HTTP/1.1",
]
HEADER_NAMES = [
    "Content-Type",
    "Connection",
    "X-Guardstream-Deadline-Ms",
    "Transfer-Encoding",
    "Content-Length",
    "X-\x00Nul",
    "Bad Name",
    " Folded",
    "",
]
HEADER_VALUES = st.one_of(
    st.sampled_from(
        ["application/json", "close", "keep-alive", "chunked", "1", "0", "-1", "1e3", " 7 "]
    ),
    st.sampled_from(["\u00b2", "\u0663", "9" * 5000, "0" * 5000, "\x00", "a\rb", "\x7f"]),
    st.text(st.characters(max_codepoint=255), max_size=20),
)


@st.composite
def requests(draw: st.DrawFn, valid: bytes) -> bytes:
    """One raw request: a request line, headers, a `Content-Length` true, missing, lying or
    hostile, and a body."""
    line = draw(st.sampled_from(LINES) | st.binary(max_size=40).filter(lambda b: b"\n" not in b))
    body = draw(bodies(valid))
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES), max_size=4))
    length = draw(
        st.sampled_from(["true", "true", "true", "missing", "short", "long", "twice", "huge"])
    )
    lengths = {
        "true": [str(len(body))],
        "missing": [],
        "short": [str(max(0, len(body) - 3))],
        "long": [str(len(body) + 10)],
        "twice": [str(len(body)), str(len(body) + 1)],
        "huge": [str(10**12)],
    }[length]
    fields = [(n, v) for n, v in headers if n.lower() != "content-length"]
    fields += [("Content-Length", n) for n in lengths]
    if draw(st.booleans()):  # and a raw header line of bytes
        fields.append((draw(st.binary(max_size=30)).decode("latin-1"), ""))
    head = line + b"\r\n"
    for name, value in fields:
        head += f"{name}: {value}".encode("latin-1", "replace") + b"\r\n"
    return head + b"\r\n" + body


def draw_corpus(examples: int, valid: bytes) -> list[bytes]:
    corpus: list[bytes] = []

    @hypothesis_settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(requests(valid))
    def collect(request: bytes) -> None:
        corpus.append(request)

    collect()
    return corpus


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, Mapping[str, str], bytes]:
    """One HTTP/1.1 response, checked for form: status line, headers, a JSON body of exactly
    its `Content-Length`."""
    status_line = await reader.readline()
    version, status, _reason = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers["content-type"] == "application/json", headers
    body = await reader.readexactly(int(headers["content-length"]))
    orjson.loads(body)
    return int(status), headers, body


async def exchange(port: int, request: bytes) -> tuple[int, Mapping[str, str], bytes]:
    """Send `request` whole, then stop sending (as a client that said all it will), and read
    the door's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        try:
            await writer.drain()
            writer.write_eof()
        except ConnectionError:  # refused unread (413): the answer is still there to read
            pass
        return await asyncio.wait_for(read_response(reader), ANSWER_S)
    finally:
        writer.close()


async def test_no_raw_request_makes_the_door_crash_hang_or_answer_5xx(
    settings: Settings, engine: VllmGuardEngine
) -> None:
    port = free_port()
    settings = settings.replace(
        scorer={"interactive_port": port}, process={"max_text_chars": LIMIT}
    )
    valid = valid_body(settings, engine.model_id, "How do I bake sourdough bread at home?")
    # A well-formed request among the drawn ones (few random draws are): the door decides it
    # between hostile neighbours.
    well_formed = b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
        SCORE_PATH.encode(),
        len(valid),
        valid,
    )
    corpus = draw_corpus(80, valid)
    corpus.insert(len(corpus) // 2, well_formed)
    statuses: dict[int, int] = {}
    async with in_process(settings, engine, "scorer") as pipeline:
        assert await asyncio.to_thread(wait_for_port, port, 120)
        for request in corpus:
            status, headers, body = await exchange(port, request)
            assert status in DECIDED | REFUSED, (status, request[:300], body)
            if status == 200:
                Decision.from_json(body)
            elif status in REFUSED:
                assert orjson.loads(body).get("error") or orjson.loads(body).get("reason")
                assert headers["connection"] == "close" or status in (404, 405, 422)
            statuses[status] = statuses.get(status, 0) + 1

            # The door serves the next request: a well-formed one, twice on one connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for _ in range(2):
                    writer.write(
                        b"POST " + SCORE_PATH.encode() + b" HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
                    )
                    await writer.drain()
                    next_status, _, next_body = await asyncio.wait_for(
                        read_response(reader), ANSWER_S
                    )
                    assert next_status == 422, next_body
            finally:
                writer.close()
        decided = pipeline.scorer.counts["interactive"]
    # The corpus reached the decisions and the framing's refusals (the contract's 422 is met
    # after every drawn request by the follow-up `{}`; 80 random draws need not hold one).
    assert statuses.get(200, 0) >= 1 and decided >= 1, statuses
    # (411 and 413 are each met by name in the framing-edge test below.)
    assert statuses.get(400, 0) >= 1, statuses


async def test_the_framing_edges_each_get_their_own_answer(
    settings: Settings, engine: VllmGuardEngine
) -> None:
    """The cases named one by one, so each is pinned whatever Hypothesis draws."""
    port = free_port()
    settings = settings.replace(scorer={"interactive_port": port})
    valid = valid_body(settings, engine.model_id, "The weather is lovely today.")
    post = b"POST /v1/score HTTP/1.1\r\n"
    cases = {
        b"POST /v1/score HTTP/2.0\r\n\r\n": 400,
        b"POST /v1/score\r\n\r\n": 400,
        b"POST /v1/\x00score HTTP/1.1\r\n\r\n": 400,
        post + b"X-Nul: a\x00b\r\n\r\n": 400,
        post + b"X-\x01: a\r\n\r\n": 400,
        post + b"No colon here\r\n\r\n": 400,
        post + b"Content-Length: \xb2\r\n\r\n{}": 400,  # `²`: a digit to `str.isdigit`
        post + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n": 413,
        post + b"Content-Length: 10\r\n\r\n{}": 400,  # lying: the body ends first
        post + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}": 400,
        post + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n": 411,
        post + b"Content-Length: 99999999\r\n\r\n": 413,
        post + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n": 431,
        b"POST /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n": 400,
        post
        + b"X-Guardstream-Deadline-Ms: "
        + b"0" * 5000
        + b"\r\nContent-Length: 2\r\n\r\n{}": 422,
        post + b"X-Guardstream-Deadline-Ms: \xb2\r\nContent-Length: 2\r\n\r\n{}": 422,
        b"GET /v1/score HTTP/1.1\r\n\r\n": 405,
        b"POST /elsewhere HTTP/1.1\r\n\r\n": 404,
        post + b"Content-Length: 1\r\n\r\n\xff": 422,
    }
    async with in_process(settings, engine, "scorer"):
        assert await asyncio.to_thread(wait_for_port, port, 120)
        for request, expected in cases.items():
            status, _, body = await exchange(port, request)
            assert status == expected, (request[:120], status, body)
        # A hostile deadline header on a valid request is read as the cap: decided.
        status, _, body = await exchange(
            port,
            post
            + b"X-Guardstream-Deadline-Ms: "
            + b"9" * 5000
            + f"\r\nContent-Length: {len(valid)}\r\n\r\n".encode()
            + valid,
        )
        assert status == 200, body
        # HTTP/1.0 without keep-alive: answered, then closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /v1/score HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
            status, headers, _ = await asyncio.wait_for(read_response(reader), ANSWER_S)
            assert (status, headers["connection"]) == (422, "close")
            assert await asyncio.wait_for(reader.read(), ANSWER_S) == b""
        finally:
            writer.close()
