"""Erasure's pure part: every field of a request is hostile (refused before any store is
touched, with the field named), discovery grows the target until no store learns more, a dry
run reaches every store as a dry run, and a receipt holds hashed ids only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardstream.cli import app
from guardstream.verdict.erasure import (
    MAX_POSTS,
    Erasure,
    InvalidSelector,
    StoreReceipt,
    Target,
    author_key,
    hashed,
    selector,
)

pytestmark = pytest.mark.unit

TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

HOSTILE_CHARS = st.sampled_from(["\x00", "\x1f", "\x7f", "\x9f", "\ud800", "\udfff", "\n"])
hostile_ids = st.one_of(
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), HOSTILE_CHARS, st.text(max_size=5)),
    st.text(min_size=129, max_size=400).filter(lambda t: len(t) > 128),
    st.just(""),
)


@given(hostile_ids)
@example("\x00")
@example("a\ud800")
@example("x" * 129)
@example("")
def test_a_hostile_post_or_author_id_is_refused_naming_its_field(value: str) -> None:
    with pytest.raises(InvalidSelector) as post:
        selector("acme", posts=[value])
    assert post.value.field == "post"
    with pytest.raises(InvalidSelector) as author:
        selector("acme", author=value)
    assert author.value.field == "author"


@given(st.text(max_size=80).filter(lambda t: TENANT.fullmatch(t) is None))
@example("*")
@example("Acme")
@example("acme\x00")
@example("")
@example("a" * 65)
def test_a_tenant_that_is_no_tenant_name_is_refused(tenant: str) -> None:
    with pytest.raises(InvalidSelector) as refused:
        selector(tenant, posts=["p-1"])
    assert refused.value.field == "tenant"


def test_a_request_names_posts_or_an_author_and_not_too_many() -> None:
    for bad in (
        {},
        {"posts": ["p"], "author": "a"},
        {"posts": [f"p{i}" for i in range(MAX_POSTS + 1)]},
    ):
        with pytest.raises(InvalidSelector):
            selector("acme", **bad)  # type: ignore[arg-type]
    assert selector("acme", posts=["p", "p", "q"]).post_ids == ("p", "q")
    with pytest.raises(InvalidSelector):
        selector("acme", posts=[3])  # type: ignore[list-item]


def test_hashes_are_tenant_scoped_and_purpose_separated() -> None:
    assert hashed("acme", "u1") == hashed("acme", "u1")
    assert hashed("acme", "u1") != hashed("beta", "u1")
    assert author_key("acme", "u1") != hashed("acme", "u1")
    # Framed: ("ab", "c") and ("a", "bc") never meet.
    assert hashed("ab", "c") != hashed("a", "bc")


@dataclass
class Store:
    """A store that knows, per post, more posts or content keys (a fake for the run's logic)."""

    name: str
    posts: dict[str, set[str]] = field(default_factory=dict)
    keys: dict[str, set[str]] = field(default_factory=dict)
    by_author: set[str] = field(default_factory=set)
    erased: list[tuple[Target, bool]] = field(default_factory=list)

    async def discover(self, target: Target) -> Target:
        posts = set(self.by_author) if target.selector.author_id else set()
        keys: set[str] = set()
        for p in target.post_ids:
            posts |= self.posts.get(p, set())
            keys |= self.keys.get(p, set())
        return target.learnt(posts, keys)

    async def erase(self, target: Target, dry_run: bool) -> StoreReceipt:
        self.erased.append((target, dry_run))
        n = len(target.post_ids)
        return StoreReceipt(store=self.name, found=n, removed=0 if dry_run else n)


async def test_discovery_runs_until_no_store_learns_more_and_dry_runs_reach_every_store() -> None:
    # The index knows the author's posts; a later store maps p2 to p3 (same thread); the
    # first store knows p3's content key only once p3 is known.
    index = Store("index", by_author={"p1", "p2"}, keys={"p3": {"k3"}})
    thread = Store("thread", posts={"p2": {"p3"}}, keys={"p1": {"k1"}})
    run = Erasure([index, thread])
    for dry_run in (True, False):
        receipt = await run.run(selector("acme", author="u1"), dry_run=dry_run, requested_by="t")
        target = index.erased[-1][0]
        assert target.post_ids == {"p1", "p2", "p3"} and target.content_keys == {"k1", "k3"}
        assert [d for _, d in index.erased[-1:] + thread.erased[-1:]] == [dry_run, dry_run]
        assert receipt.dry_run is dry_run and [s.store for s in receipt.stores] == [
            "index",
            "thread",
        ]
        assert receipt.removed == (0 if dry_run else 6)
        dumped = receipt.model_dump_json()
        for raw in ("u1", '"p1"', '"p2"', '"p3"'):
            assert raw not in dumped
        assert receipt.subject == (hashed("acme", "u1"),)
        assert set(receipt.posts) == {hashed("acme", p) for p in ("p1", "p2", "p3")}


runner = CliRunner()


@settings(max_examples=10, deadline=None)
@given(hostile_ids)
@example("\x00")
@example("x" * 129)
def test_the_cli_refuses_a_hostile_id_with_exit_2_before_touching_a_store(value: str) -> None:
    for args in (["--post", value], ["--author", value]):
        result = runner.invoke(app, ["erase", "--tenant", "acme", *args])
        assert result.exit_code == 2, result.output
        assert "invalid erasure request" in result.output
    result = runner.invoke(app, ["erase", "--tenant", "ACME", "--post", "p-1"])
    assert result.exit_code == 2 and "tenant" in result.output


async def test_author_history_plugs_in_as_an_eraser_called_only_for_an_author() -> None:
    from guardstream.verdict.erasers import AuthorHistoryEraser

    calls: list[tuple[str, str]] = []

    async def forget(tenant: str, author_id: str) -> int:
        calls.append((tenant, author_id))
        return 3

    run = Erasure([AuthorHistoryEraser(forget)])
    dry = await run.run(selector("acme", author="u1"), dry_run=True, requested_by="t")
    post = await run.run(selector("acme", posts=["p1"]), dry_run=False, requested_by="t")
    assert calls == [] and dry.removed == 0 and post.removed == 0
    done = await run.run(selector("acme", author="u1"), dry_run=False, requested_by="t")
    assert calls == [("acme", "u1")] and done.store("author_history").removed == 3
    assert "u1" not in done.model_dump_json()
