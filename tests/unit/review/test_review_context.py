"""Context beside a task, without I/O (issue 22): neighbours merged strongest-first and each
once, the disagreement warning on near-identical content only, the stored text features of
any text, the opaque tenant-scoped author reference, the per-tenant vector matrix, and the
panels rendered as text whatever a reason or a post holds."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardstream.contracts.events import REVIEW_REASON_MAX, ReviewOutcome, Verdict
from guardstream.review.context import (
    IDENTICAL_MIN,
    SEMANTIC_MIN,
    SIMILAR_MAX,
    DecidedItem,
    MatchKind,
    ReviewContext,
    author_history,
    conflict,
    merged,
    text_features,
)
from guardstream.review.logic import SEED_TAGS, long_text, text_preview
from guardstream.review.services.context import TenantVectors
from guardstream.review.store.posts import PostText
from guardstream.verdict.embeddings import to_bytes
from guardstream.verdict.erasure import author_key
from tests.support.review import NOW, review_task
from tests.unit.review.test_console_render import Dom, hostile_text, render

pytestmark = pytest.mark.unit


def item(
    task_id: str, verdict: Verdict = Verdict.UNSAFE, *, ago_s: int = 0, **kw: object
) -> DecidedItem:
    fields: dict[str, object] = {
        "task_id": task_id,
        "human_verdict": verdict,
        "model_verdict": Verdict.CONTROVERSIAL,
        "outcome": ReviewOutcome.CORRECT,
        "categories": ("Violent",),
        "tags": (SEED_TAGS[1],),
        "reason": "地域攻击",
        "decided_at": NOW - timedelta(seconds=ago_s),
    }
    return DecidedItem(**(fields | kw))  # type: ignore[arg-type]


def test_each_post_is_listed_once_under_its_strongest_kind_strongest_first() -> None:
    exact = [item("e1", ago_s=5), item("e2", ago_s=1)]
    near = [item("n1"), item("e1")]  # e1 is also a near duplicate: it stays exact
    semantic = [
        (item("s1"), 0.7),
        (item("s2"), 0.95),
        (item("n1"), 0.99),  # stays near
        (item("low"), SEMANTIC_MIN - 0.01),  # says too little: left out
        (item("self"), 1.0),  # the task itself: never its own neighbour
    ]
    out = merged(exact, near, semantic, exclude="self")
    assert [(n.item.task_id, n.kind) for n in out] == [
        ("e2", MatchKind.EXACT),  # newest decision first among equals
        ("e1", MatchKind.EXACT),
        ("n1", MatchKind.NEAR),
        ("s2", MatchKind.SEMANTIC),
        ("s1", MatchKind.SEMANTIC),
    ]
    many = merged([], [], [(item(f"s{i}"), 0.6 + i / 100) for i in range(20)], exclude="x")
    assert len(many) == SIMILAR_MAX and many[0].item.task_id == "s19"


def test_disagreement_is_flagged_on_near_identical_content_only() -> None:
    agree = merged([item("a", Verdict.UNSAFE)], [item("b", Verdict.UNSAFE)], [], exclude="t")
    assert conflict(agree) == ()
    split = merged([item("a", Verdict.UNSAFE)], [item("b", Verdict.SAFE)], [], exclude="t")
    assert conflict(split) == (Verdict.SAFE, Verdict.UNSAFE)
    # A translation (cosine above IDENTICAL_MIN) counts; a merely related post does not.
    close = merged(
        [item("a", Verdict.UNSAFE)], [], [(item("s", Verdict.SAFE), IDENTICAL_MIN)], exclude="t"
    )
    assert conflict(close) == (Verdict.SAFE, Verdict.UNSAFE)
    related = merged([item("a", Verdict.UNSAFE)], [], [(item("s", Verdict.SAFE), 0.7)], exclude="t")
    assert conflict(related) == ()


def test_near_duplicate_features_ignore_punctuation_but_not_digits() -> None:
    base = text_features("那个省的人都是骗子，大家小心。别信他们！")
    assert base.fingerprint is not None
    assert text_features("那个省的人都是骗子 大家小心 别信他们") == base
    assert text_features("Meet me at 5 pm near the old bridge, bring the stuff").digits == "5"
    assert text_features("Meet me at 7 pm near the old bridge, bring the stuff").digits == "7"
    assert text_features("ok 好").fingerprint is None  # too little signal: never near-matched


@settings(deadline=None)
@given(hostile_text)
@example("\x00\ud800" * 3000)
@example("")
def test_any_text_has_storable_features(text: str) -> None:
    features = text_features(text)
    assert features.fingerprint is None or -(1 << 63) <= features.fingerprint < 1 << 63
    assert features.digits.isdecimal() or features.digits == ""


@settings(deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
@example("acme", "u1", "beta")
@example("ab", "c", "a")  # framing: ("ab", "c") is not ("a", "bc")
def test_the_author_key_is_opaque_and_tenant_scoped(tenant: str, author: str, other: str) -> None:
    ref = author_key(tenant, author)
    assert ref == author_key(tenant, author) and len(ref) == 32
    assert author not in ref or len(author) < 4
    if other != tenant:
        assert author_key(other, author) != ref
    if len(tenant) > 1:
        assert author_key(tenant[:-1], tenant[-1] + author) != ref


def test_the_tenant_matrix_grows_skips_foreign_sizes_and_keeps_the_newest() -> None:
    vectors = TenantVectors(dim=4, cap=3)
    unit = np.eye(4, dtype=np.float32)
    vectors.add([(1, "a", to_bytes(unit[0])), (2, "b", to_bytes(unit[1]))])
    vectors.add([(5, "bad", b"\x00" * 6), (7, "c", to_bytes(unit[2]))])
    assert vectors.task_ids == ["a", "b", "c"] and vectors.seq == 7
    vectors.add([(8, "d", to_bytes(unit[3]))])
    assert vectors.task_ids == ["b", "c", "d"]
    assert np.array_equal(vectors.matrix, unit[1:])


def context_page(ctx: ReviewContext | None) -> Dom:
    t = review_task()
    dom = Dom()
    dom.feed(
        render(
            "task.html",
            task=t,
            text=PostText(t.post_id, t.tenant, "prompt", "text", None),
            parts=long_text("text"),
            reason_max=REVIEW_REASON_MAX,
            tags=SEED_TAGS,
            can_decide=True,
            can_read_text=True,
            form={"reason": "", "tags": []},
            context=ctx,
        )
    )
    return dom


@settings(deadline=None)  # a page render on 2 shared cores
@given(hostile_text, hostile_text)
@example("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")
def test_the_panels_show_reasons_and_previews_as_text(reason: str, preview: str) -> None:
    # As the store gives them: PostgreSQL holds no lone surrogate, previews are text_preview's.
    reason, preview = text_preview(reason)[:50], text_preview(preview)
    neighbour = item("a", reason=reason, preview=preview)
    similar = merged([neighbour], [item("b", Verdict.SAFE)], [], exclude="t")
    author = author_history([item("c", reason=reason, preview=preview)], {"unsafe": 3}, 2)
    dom = context_page(ReviewContext(similar, conflict(similar), author, True))
    assert dom.tags.count("script") == 1 and "img" not in dom.tags  # the page's own script
    assert "safe / unsafe" in dom.text["similar-conflict"]
    assert dom.text["author-summary"].startswith("3 decided · 3 unsafe · 2 corrected")


def test_no_context_no_panels_and_an_unindexed_task_says_so() -> None:
    dom = context_page(None)
    assert "similar" not in dom.attrs and "author-context" not in dom.attrs
    empty = context_page(ReviewContext((), (), None, False))
    assert "not indexed yet" in empty.text["similar-none"]
    assert "author-context" not in empty.attrs
