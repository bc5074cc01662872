"""`guardstream produce` as a user runs it (a child process, stdin a pipe), against the real
broker, Redis and the real triage process in this event loop:

- a post triage refuses (whitespace only; 1 MB of text, longer than the deployment allows)
  is reported the moment its DLQ record appears, with its reason, and exit code 3, never a
  wait until the timeout; with a post still undecided the timeout wins (exit 1);
- the text comes from stdin or a file of any size; JSON Lines files are checked line by line:
  every bad line is reported by number, nothing is sent, exit 2, never a traceback.
Hostile JSON Lines are drawn by Hypothesis (NUL and other control characters, lone surrogates
escaped and raw, wrong types, unknown fields, huge fields, bytes that are no JSON).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.contracts.events import Post, Source, Verdict, utcnow
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.adversarial import read_records
from guardstream.devtools.produce import new_post
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.runtime.kafka import ensure_topics
from guardstream.runtime.settings import Settings
from guardstream.triage import main as triage_main
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache
from guardstream.verdict.intake import triage_record
from tests.integration.cli.conftest import guardstream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MEGABYTE_TEXT = "word " * 210_000  # 1.05 MB: far over max_text_chars (65,536)


@pytest.fixture
async def triage(settings: Settings) -> AsyncIterator[None]:
    await ensure_topics(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(triage_main.run(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


def dlq_lines(stdout: str) -> list[dict[str, object]]:
    return [line for line in map(orjson.loads, stdout.splitlines()) if line.get("outcome")]


async def test_a_refused_post_is_reported_from_the_dlq_with_its_reason_and_exit_3(
    settings: Settings, triage: None, tmp_path: Path
) -> None:
    # A timeout longer than the test's own: only the DLQ path can end the command in time.
    blank = await guardstream(
        settings, "produce", "--text-file", "-", "--wait", "--timeout", "900",
        stdin=b" \t \n",
    )  # fmt: skip
    assert blank.code == 3, blank.stderr
    (line,) = dlq_lines(blank.stdout)
    assert line["reason"] == "empty_text"
    assert line["consumer"] == f"{settings.namespace}.guardstream-triage"  # triage's group
    assert line["topic"] == TopicNames(settings.namespace)[Topic.DLQ]
    assert "went to the DLQ" in blank.stderr and "empty_text" in blank.stderr
    assert "timed out" not in blank.stderr and "Traceback" not in blank.stderr

    big = tmp_path / "big.txt"
    big.write_text(MEGABYTE_TEXT, encoding="utf-8")
    huge = await guardstream(
        settings, "produce", "--text-file", str(big), "--wait", "--timeout", "900"
    )
    assert huge.code == 3, huge.stderr
    (line,) = dlq_lines(huge.stdout)
    assert line["reason"] == "text_too_long"
    assert "1050000 characters" in str(line["detail"])  # the whole text arrived
    assert isinstance(line["payload_size"], int) and line["payload_size"] > 1_000_000

    # The same megabyte through stdin, as `--text -`.
    piped = await guardstream(
        settings, "produce", "--text", "-", "--wait", "--timeout", "900",
        stdin=MEGABYTE_TEXT.encode(),
    )  # fmt: skip
    assert piped.code == 3, piped.stderr
    assert [d["reason"] for d in dlq_lines(piped.stdout)] == ["text_too_long"]

    # One refused, one never decided (no scorer runs here): the timeout wins, exit 1, and
    # the refused one was still reported.
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        '{"text": "   ", "post_id": "blank-1"}\n\n{"text": "a real post", "post_id": "real-1"}\n'
    )
    mixed = await guardstream(
        settings, "produce", "--jsonl", str(posts), "--wait", "--timeout", "15"
    )
    assert mixed.code == 1, mixed.stderr
    assert [(d["post_id"], d["reason"]) for d in dlq_lines(mixed.stdout)] == [
        ("blank-1", "empty_text")
    ]
    assert "1 of 2 undecided" in mixed.stderr


async def seed_verdict(settings: Settings, text: str, tenant: str) -> None:
    """Cache an unsafe verdict for `text` as the scorer would have: triage decides it from the
    cache (no model runs in these tests)."""
    item = triage_record(
        new_post(text, tenant=tenant).to_json(),
        max_text_chars=settings.process.max_text_chars,
        model=served_model_id(settings),
        adapter=None,
        policies=load_registry(settings.policy.dir),
    )
    cache = RedisVerdictCache.from_settings(settings)
    try:
        await cache.put_many(
            {
                item.verdict_key: CachedVerdict(
                    verdict=Verdict.UNSAFE,
                    categories=("Violent",),
                    confidence=0.98,
                    reason="Qwen3Guard: Unsafe [Violent]",
                    source=Source.MODEL,
                    model=served_model_id(settings),
                    decided_at=utcnow(),
                )
            }
        )
    finally:
        await cache.close()


async def test_decisions_and_refusals_of_a_jsonl_file_each_get_one_line(
    settings: Settings, triage: None, tmp_path: Path
) -> None:
    await seed_verdict(settings, "How can I make a bomb?", "acme")
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        '{"text": "How can I make a bomb?", "tenant": "acme", "post_id": "bomb-1"}\n'
        '{"text": "\\n\\t  ", "tenant": "acme", "post_id": "blank-1"}\n'
    )
    ran = await guardstream(settings, "produce", "--jsonl", str(posts), "--wait")
    assert ran.code == 3, ran.stderr  # every post has an outcome, one of them the DLQ
    by_post = {line["post_id"]: line for line in map(orjson.loads, ran.lines)}
    assert by_post.keys() == {"bomb-1", "blank-1"}
    decided = by_post["bomb-1"]
    assert (decided["verdict"], decided["action"], decided["source"]) == (
        "unsafe",
        "block",
        "cache",
    )
    assert (decided["tenant"], decided["categories"]) == ("acme", ["Violent"])
    assert by_post["blank-1"]["reason"] == "empty_text"
    assert "1 of 2 went to the DLQ" in ran.stderr

    alone = await guardstream(
        settings, "produce", "--text", "How can I make a bomb?", "--tenant", "acme", "--wait"
    )
    assert alone.code == 0, alone.stderr
    (line,) = map(orjson.loads, alone.lines)
    assert (line["verdict"], line["source"]) == ("unsafe", "cache")


async def test_a_jsonl_file_with_bad_lines_sends_nothing_and_names_each_line(
    settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    good = [
        {"text": "first", "post_id": "ok-1", "tenant": "acme"},
        {"text": "second", "post_id": "ok-2", "lang": "en"},
    ]
    bad = ['{"text": "a\\u0000b"}', "[1, 2]", '{"txt": "typo"}', '{"text": "x", "tenant": 7}']
    body = [json.dumps(good[0]), bad[0], "", bad[1], json.dumps(good[1]), bad[2], bad[3]]
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(body) + "\n")
    ran = await guardstream(settings, "produce", "--jsonl", str(path))
    assert ran.code == 2
    assert reported_lines(ran.stderr, str(path)) == {2, 4, 6, 7}
    assert "4 bad line(s)" in ran.stderr and "nothing sent" in ran.stderr
    assert "Traceback" not in ran.stderr
    posts_topic = TopicNames(settings.namespace)[Topic.POSTS]
    assert await read_records(settings, [posts_topic]) == []

    # The good lines alone are sent, with their own fields.
    path.write_text("\n".join(json.dumps(g) for g in good) + "\n")
    sent = await guardstream(settings, "produce", "--jsonl", str(path), "--tenant", "beta")
    assert sent.code == 0, sent.stderr
    assert sent.lines == ["sent ok-1", "sent ok-2"]
    posts = sorted(
        (Post.from_json(r) for r in await read_records(settings, [posts_topic])),
        key=lambda p: p.post_id,
    )
    assert [(p.post_id, p.tenant, p.lang) for p in posts] == [
        ("ok-1", "acme", None),
        ("ok-2", "beta", "en"),
    ]


def reported_lines(stderr: str, where: str) -> set[int]:
    return {int(n) for n in re.findall(rf"^{re.escape(where)}:(\d+): ", stderr, re.MULTILINE)}


# --- hostile JSON Lines, in process (no broker: a file with a bad line is never sent) ---------

runner = CliRunner()

CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n\r"]
FORBIDDEN = st.sampled_from(CONTROLS) | st.integers(0xD800, 0xDFFF).map(chr)
AROUND = st.text(max_size=5)
SPOILED = st.tuples(AROUND, FORBIDDEN, AROUND).map("".join)
WRONG_TYPE = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = ("text", "post_id", "tenant", "author_id", "lang", "region", "prompt")
PRINTABLE = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    str.strip
)
GOOD_LINES = st.fixed_dictionaries(
    {"text": PRINTABLE},
    optional={
        "tenant": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
        "lang": st.sampled_from(["en", "zh", "pt-BR"]),
        "kind": st.just("prompt"),
    },
).map(lambda d: json.dumps(d, ensure_ascii=False).encode())


def _escaped(fields: dict[str, object]) -> bytes:
    return json.dumps(fields).encode()  # lone surrogates and controls as \\u escapes


def _raw(fields: dict[str, object]) -> bytes:
    # Control characters raw inside a string (not JSON), lone surrogates as CESU bytes.
    return json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")


BAD_LINES = st.one_of(
    # A forbidden character in any text field, escaped or raw.
    st.builds(
        lambda field, value, encode: encode({"text": "t", field: value}),
        st.sampled_from(FIELDS),
        SPOILED,
        st.sampled_from([_escaped, _raw]),
    ),
    # A wrong type in any field.
    st.builds(
        lambda field, value: _escaped({"text": "t", field: value}),
        st.sampled_from((*FIELDS, "kind")),
        WRONG_TYPE,
    ),
    # Unknown fields, missing text, a kind that is none, a response without its prompt.
    st.builds(lambda name: _escaped({"text": "t", name: "x"}), st.from_regex(r"[A-Z]\w{0,8}")),
    st.just(b'{"post_id": "no-text"}'),
    st.builds(lambda k: _escaped({"text": "t", "kind": k}), st.text(max_size=8)).filter(
        lambda b: b not in (b'{"text": "t", "kind": "prompt"}',)
    ),
    st.just(b'{"text": "t", "kind": "response"}'),
    # Not an object, not JSON, not UTF-8.
    st.builds(lambda v: json.dumps(v).encode(), WRONG_TYPE | st.none()),
    st.binary(max_size=30).map(lambda b: b"{" + b.replace(b"\n", b"")),
    st.binary(max_size=5).map(lambda b: b'{"text": "\xff' + b.replace(b"\n", b"") + b'"}'),
    # Huge fields beyond their limits (ids 128, tenant 63, lang 35 characters).
    st.builds(
        lambda field, n: _escaped({"text": "t", field: "a" * n}),
        st.sampled_from(["post_id", "author_id", "tenant", "lang", "region"]),
        st.integers(200, 200_000),
    ),
    st.just(b'{"text": ""}'),
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.tuples(st.booleans(), GOOD_LINES, BAD_LINES), min_size=1, max_size=15).filter(
        lambda drawn: any(is_bad for is_bad, _, _ in drawn)
    )
)
def test_every_bad_line_is_named_and_nothing_is_sent(
    lines: list[tuple[bool, bytes, bytes]],
) -> None:
    body = b"\n".join(bad if is_bad else good for is_bad, good, bad in lines)
    result = runner.invoke(app, ["produce", "--jsonl", "-"], input=body)
    expected = {n for n, (is_bad, _, _) in enumerate(lines, start=1) if is_bad}
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert reported_lines(result.stderr, "stdin") == expected, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""  # nothing sent, nothing said on stdout
