"""The console's pages as rendered (Jinja2, no server): the queue's text preview of any text,
however hostile, is one escaped line; a long post is its head, a folded middle and its tail,
nothing lost; the note that the model saw a shortened text; the form as submitted survives a
refusal (issue 19, console); a held post is shown unpublished until decided, and still held
past its deadline (never "downgraded to safe")."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardstream.contracts.events import REVIEW_REASON_MAX, Action, Verdict
from guardstream.review.api import TaskOut, task_json
from guardstream.review.console import page_countdown, templates
from guardstream.review.logic import (
    LONG_TEXT_HEAD,
    LONG_TEXT_MIN_FOLD,
    LONG_TEXT_TAIL,
    PREVIEW_CHARS,
    SEED_TAGS,
    SlaState,
    Task,
    TaskState,
    long_text,
    text_preview,
)
from guardstream.review.store.posts import PostText
from guardstream.review.store.tasks import QueueFilter, QueueStats
from tests.support.review import NOW, review_task

pytestmark = pytest.mark.unit


# Any code point, lone surrogates and C0/C1/format controls (bidi overrides) made likely, and
# markup-shaped runs: what a hostile post holds.
hostile_char = st.one_of(
    st.characters(codec=None),
    st.characters(categories=["Cs"]),  # lone surrogates: UTF-8 cannot carry them
    st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]),  # controls, bidi overrides
    st.sampled_from("<>&\"'/=`"),
)
# Joined lists, not `st.text`, which never draws a lone surrogate.
hostile_chars = st.lists(hostile_char, max_size=400).map("".join)
hostile_text = st.one_of(
    hostile_chars,
    st.lists(
        st.one_of(
            st.lists(hostile_char, max_size=20).map("".join),
            st.builds(lambda s: f"<{s}>", st.lists(hostile_char, max_size=12).map("".join)),
            st.builds(lambda n: "w" * n, st.integers(100, 3000)),  # one very long word
        ),
        max_size=12,
    ).map("".join),
)


class Dom(HTMLParser):
    """Start tags in order, and the text inside elements with an id or class of interest."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.stack: list[str] = []
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.ticked: list[str | None] = []  # checked quick-tag boxes

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        named = dict(attrs)
        key = named.get("id") or (named.get("class") or "").split(" ")[0] or tag
        self.attrs.setdefault(key, named)
        if named.get("name") == "tags" and "checked" in named:
            self.ticked.append(named.get("value"))
        if tag not in ("input", "br", "meta", "link"):
            self.stack.append(key)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("input", "br", "meta", "link") and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for key in self.stack:
            self.text[key] = self.text.get(key, "") + data


def render(name: str, **context: Any) -> str:
    base: dict[str, Any] = {
        "countdown": lambda deadline, held=False: page_countdown(deadline, NOW, held=held),
        "reviewer": None,
        "csrf": "c",
        "message": None,
        "error": None,
        "can_qa": False,
    }
    html = templates.env.get_template(name).render(base | context)
    html.encode("utf-8")  # what the response does: a lone surrogate would fail it here
    return html


def queue_page(previews: dict[str, str], tasks: list[Task]) -> Dom:
    dom = Dom()
    dom.feed(
        render(
            "queue.html",
            tasks=tasks,
            previews=previews,
            stats=QueueStats(len(tasks), 0, None),
            filters=QueueFilter(),
            avg_response="–",
        )
    )
    return dom


@given(hostile_text)
def test_a_preview_is_one_short_line_of_visible_text(text: str) -> None:
    shown = text_preview(text)
    assert len(shown) <= PREVIEW_CHARS + 1
    assert shown == shown.strip()
    assert not any(c in shown for c in "\n\r\t\x00\u202e\u2066\ufeff")
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in shown)
    assert shown.endswith("…") or len(shown) <= PREVIEW_CHARS
    plain = " ".join(text.split())
    if plain.isprintable() and len(plain) <= PREVIEW_CHARS:
        assert shown == plain  # ordinary short text is shown as it is


@given(hostile_text)
def test_the_queue_shows_any_preview_escaped_as_text(text: str) -> None:
    benign = queue_page({"x": "plain words"}, [review_task()])
    dom = queue_page({review_task().task_id: text_preview(text)}, [review_task()])
    assert dom.tags == benign.tags  # no element, attribute or script came from the text
    assert dom.text.get("preview", "") == text_preview(text)


def test_a_reader_without_text_permission_sees_no_preview_cell_content() -> None:
    dom = queue_page({}, [review_task()])
    assert dom.text.get("preview", "") == ""


@given(st.text(st.characters(codec="utf-8"), max_size=5000))
def test_a_long_post_is_split_into_head_middle_and_tail_with_nothing_lost(text: str) -> None:
    parts = long_text(text)
    assert parts.head + parts.middle + parts.tail == text
    if len(text) <= LONG_TEXT_HEAD + LONG_TEXT_TAIL + LONG_TEXT_MIN_FOLD:
        assert (parts.head, parts.middle, parts.tail) == (text, "", "")
    else:
        assert LONG_TEXT_HEAD - 80 <= len(parts.head) <= LONG_TEXT_HEAD
        assert LONG_TEXT_TAIL - 80 <= len(parts.tail) <= LONG_TEXT_TAIL
        assert len(parts.middle) >= LONG_TEXT_MIN_FOLD


def task_page(text: str, t: Task, form: dict[str, Any] | None = None) -> Dom:
    dom = Dom()
    dom.feed(
        render(
            "task.html",
            task=t,
            text=PostText(t.post_id, t.tenant, "prompt", text, None),
            parts=long_text(text),
            reason_max=REVIEW_REASON_MAX,
            tags=SEED_TAGS,
            can_decide=True,
            can_read_text=True,
            form=form or {"reason": "", "tags": []},
        )
    )
    return dom


def test_a_long_post_shows_its_tail_outside_the_fold_and_the_controls_beside_it() -> None:
    words = " ".join(f"word{i}" for i in range(2000))
    text = words + " 最后一句才是真正的攻击。"
    dom = task_page(text, review_task())
    shown = dom.text["post-head"] + dom.text["post-middle-text"] + dom.text["post-tail"]
    assert shown == text
    assert dom.text["post-tail"].endswith("最后一句才是真正的攻击。")
    assert dom.text["post-head"].startswith("word0 word1")
    assert "post-middle" in dom.attrs and "controls" in dom.attrs
    assert "truncated-note" not in dom.attrs
    short = task_page("短文本", review_task())
    assert short.text["post-text"] == "短文本" and "post-middle" not in short.attrs


def test_the_note_says_when_the_model_saw_a_shortened_text() -> None:
    dom = task_page("x " * 5000, review_task(input_truncated=True))
    assert "shortened text" in dom.text["truncated-note"]


def test_a_refused_form_comes_back_as_it_was_submitted() -> None:
    reason = "r" * (REVIEW_REASON_MAX + 9)
    form = {"outcome": "correct", "verdict": "unsafe", "reason": reason, "tags": [SEED_TAGS[1]]}
    dom = task_page("text", review_task(), form)
    assert "checked" in dom.attrs["outcome-correct"]
    assert "checked" in dom.attrs["verdict-unsafe"]
    assert "checked" not in dom.attrs["verdict-safe"]
    assert dom.attrs["reason"]["value"] == reason  # whole: no maxlength anywhere
    assert "maxlength" not in dom.attrs["reason"]
    assert dom.text["reason-count"].strip() == f"{len(reason)} / {REVIEW_REASON_MAX}"
    assert dom.ticked == [SEED_TAGS[1]]


def test_the_task_page_offers_the_packs_categories_with_the_models_picked() -> None:
    html = render(
        "task.html",
        task=replace(review_task(), categories=("PII",)),
        text=None,
        parts=None,
        reason_max=REVIEW_REASON_MAX,
        tags=SEED_TAGS,
        pack_categories=("PII", "Financial Fraud"),
        can_decide=True,
        can_read_text=False,
        form={"reason": "", "tags": []},
    )
    inputs: list[dict[str, str | None]] = []

    class Inputs(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "input":
                inputs.append(dict(attrs))

    Inputs().feed(html)
    boxes = [(i["value"], "checked" in i) for i in inputs if i.get("name") == "categories"]
    assert boxes == [("PII", True), ("Financial Fraud", False)]
    dom = Dom()
    dom.feed(html)
    assert "PII" in dom.text["categories"]


# --- held posts (`hold`, schema 1.1): unpublished until decided, never downgraded ------------


def test_a_held_task_says_in_words_that_the_post_is_unpublished_until_decided() -> None:
    held = task_page("text", review_task(action=Action.HOLD))
    assert held.text["held-badge"] == "held — unpublished until decided"
    assert held.text["provisional-action"].startswith("hold")
    assert "not published" in held.text["provisional-action"]
    plain = task_page("text", review_task())
    assert "held-badge" not in plain.attrs
    assert plain.text["provisional-action"] == "review"
    queue = queue_page({}, [review_task(action=Action.HOLD)])
    assert "held — unpublished" in queue.text["badge"]
    assert "badge" not in queue_page({}, [review_task()]).text


def test_a_held_task_past_its_deadline_is_shown_still_held_not_downgraded() -> None:
    expired = NOW - timedelta(minutes=3)
    held = review_task(action=Action.HOLD, sla=SlaState.EXPIRED, deadline=expired)
    page = task_page("text", held)
    assert page.text["expired-badge"] == "deadline passed — still held, unpublished until decided"
    assert "downgraded" not in page.text["expired-badge"]
    assert "held-badge" not in page.attrs  # one badge says it
    assert page.text["countdown"] == "deadline passed 3m 00s ago"
    assert page.attrs["countdown"]["data-held"] == "1"  # console.js words it the same way
    assert queue_page({}, [held]).text["badge"].strip() == "deadline passed — still held"
    decided = dataclasses.replace(held, state=TaskState.DECIDED, human_verdict=Verdict.UNSAFE)
    assert "still held" not in task_page("text", decided).text["expired-badge"]
    # A review item past its deadline was downgraded by the SLA timer: the badge says so.
    plain = review_task(sla=SlaState.EXPIRED, deadline=expired)
    assert "downgraded to safe" in task_page("text", plain).text["expired-badge"]
    assert task_page("text", plain).text["countdown"] == "expired 3m 00s ago"
    assert queue_page({}, [plain]).text["badge"].strip() == "expired"


def test_the_api_task_json_carries_the_provisional_action() -> None:
    for action in (Action.REVIEW, Action.HOLD):
        task = review_task(action=action)
        assert task_json(task, NOW)["action"] == action.value
        assert TaskOut.of(task, NOW).action == action.value
        # The queue's plain dicts and the task's model say the same, field for field.
        assert task_json(task, NOW) == TaskOut.of(task, NOW).model_dump()
