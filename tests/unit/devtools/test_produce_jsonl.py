"""The JSON Lines reader of `guardstream produce --jsonl`: any bytes at all give posts and
numbered problems, never an exception; every non-blank line is exactly one of the two; a good
line's fields arrive as written (huge texts, raw U+2028, CRLF endings and a BOM included)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.events import Kind
from guardstream.devtools.produce import read_posts_jsonl

pytestmark = pytest.mark.unit

LINES = st.lists(
    st.binary(max_size=40) | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    max_size=12,
)


@given(LINES)
def test_any_bytes_give_posts_and_numbered_problems_never_an_exception(
    lines: list[bytes],
) -> None:
    data = b"\n".join(lines)
    read = read_posts_jsonl(data)
    physical = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    non_blank = {n for n, line in enumerate(physical, start=1) if line.strip()}
    problem_lines = [n for n, _ in read.problems]
    assert set(problem_lines) <= non_blank
    assert len(problem_lines) == len(set(problem_lines))  # one report per line
    assert len(read.posts) + len(read.problems) == len(non_blank)
    assert all(message for _, message in read.problems)


TEXTS = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30) | st.just(
    "line one\u2028line two\tand\r\na newline " + "长" * 300_000
)


@given(
    items=st.lists(
        st.fixed_dictionaries(
            {"text": TEXTS},
            optional={
                "tenant": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True),
                "lang": st.sampled_from(["en", "zh-Hans", "pt-BR"]),
                "region": st.sampled_from(["EU", "CN"]),
                "author_id": st.from_regex(r"[a-z]{1,10}", fullmatch=True),
            },
        ),
        min_size=1,
        max_size=6,
    ),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_good_lines_arrive_as_written(items: list[dict[str, str]], crlf: bool, bom: bool) -> None:
    end = b"\r\n" if crlf else b"\n"
    lines = [
        json.dumps({**item, "post_id": f"p-{n}"}, ensure_ascii=False).encode()
        for n, item in enumerate(items)
    ]
    data = (b"\xef\xbb\xbf" if bom else b"") + end.join(lines) + end + end  # a blank line too
    read = read_posts_jsonl(data, tenant="fallback")
    assert read.problems == []
    assert [p.post_id for p in read.posts] == [f"p-{n}" for n in range(len(items))]
    for post, item in zip(read.posts, items, strict=True):
        assert post.text == item["text"]
        assert post.tenant == item.get("tenant", "fallback")
        assert (post.lang, post.region) == (item.get("lang"), item.get("region"))
        assert post.author_id == item.get("author_id", post.author_id)
        assert post.kind is Kind.PROMPT


def test_a_response_needs_its_prompt_and_a_post_id_is_used_once() -> None:
    data = b"\n".join(
        [
            b'{"text": "ok", "kind": "response", "prompt": "q", "post_id": "a"}',
            b'{"text": "no prompt", "kind": "response"}',
            b'{"text": "again", "post_id": "a"}',
        ]
    )
    read = read_posts_jsonl(data)
    assert [(p.post_id, p.kind, p.prompt) for p in read.posts] == [("a", Kind.RESPONSE, "q")]
    assert [n for n, _ in read.problems] == [2, 3]
    assert "prompt" in read.problems[0][1] and "repeats line 1" in read.problems[1][1]
