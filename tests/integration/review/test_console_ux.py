"""What a new reviewer meets in the console (issue 19), in real Chromium (Playwright driving
Debian's `/usr/bin/chromium`): the login page says where credentials come from; the queue
previews each post (escaped, hostile text included) and its figures are the figures after a
decision; a long post is its head, a folded middle and its tail beside decision controls that
stay in view, with a note when the model saw a shortened text; a refused decision keeps the
label, tags and reason, and the reason box counts instead of cutting.

The queue and the long post are saved as PNGs (`CONSOLE_SCREENSHOTS`, e.g. `docs/assets`,
regenerates the docs' pictures; otherwise they go to the test's temporary folder)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardstream.contracts.events import REVIEW_REASON_MAX, Post
from guardstream.contracts.topics import Topic
from guardstream.review.logic import task_id, text_preview
from tests.conftest import missing
from tests.integration.review.conftest import (
    CHROMIUM,
    FLAGS,
    PASSWORD,
    Console,
    contested,
    new_test_post,
    produce,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

VIEWPORT = {"width": 1280, "height": 800}

# A long post as issue 19 met one: 11,649 characters, harm in its last sentence.
FILLER = (
    "今天去了市中心的新图书馆,环境很好,座位也多。周末人比较多,建议早点去。"
    "The new library downtown is quiet and bright; go early at weekends.\n"
)
LAST = "所以那个省的人都该被赶出去,见一个打一个。"


def long_post_text() -> str:
    body = (FILLER * 200)[: 11_649 - len(LAST) - 1]
    return body + "\n" + LAST


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[object]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before the browser starts
        missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            yield await context.new_page()
        finally:
            await browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)


async def log_in(page: object, console: Console, reviewer: str) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    await page.goto(console.base_url + "/console/login")
    await page.fill("#reviewer", reviewer)
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await expect(page).to_have_url(re.compile(r"/console$"))


async def test_the_queue_previews_posts_and_counts_after_a_decision(
    console: Console, page: object, shots: Path
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    texts = [
        "那个省的人都是骗子,大家小心。\n\n别和他们做生意。",
        # Markup, an RTL override and a word longer than any cell: shown as text, on one line.
        '<script>alert("x")</script><img src=x onerror=alert(1)> \u202eevil.exe' + " " + "w" * 400,
        "Vaccines from that region are poison, everyone knows it. " * 6,
        "该地区的人都有病,别让他们进城。",
    ]
    posts = [new_test_post(text=t) for t in texts]
    items: list[tuple[Topic, Post | object, str]] = []
    for post in posts:
        items += [(Topic.POSTS, post, post.post_id), (Topic.REVIEW, contested(post), post.post_id)]
    await produce(console.settings, *items)  # type: ignore[arg-type]
    await console.wait_tasks(len(posts))
    await console.add_reviewer("alice", ("acme",))
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: dialogs.append(d.message))

    await page.goto(console.base_url + "/console")
    credentials = page.locator("#credentials")
    await expect(credentials).to_contain_text("guardstream review add-reviewer")
    await expect(credentials).to_contain_text("password")
    await expect(credentials).to_contain_text("API token")
    await log_in(page, console, "alice")

    rows = page.locator("#queue tbody tr")
    await expect(rows).to_have_count(len(posts))
    await expect(page.locator("#depth")).to_have_text(str(len(posts)))
    # Every post's text has arrived (produced before its decision): every row has a preview.
    await expect(page.locator("td.preview bdi").filter(has_text=re.compile("."))).to_have_count(
        len(posts)
    )
    previews = await page.locator("td.preview").all_inner_texts()
    assert sorted(p.strip() for p in previews) == sorted(text_preview(t) for t in texts)
    hostile = page.locator("td.preview", has_text="<script>")
    assert await hostile.locator("script, img").count() == 0
    assert await page.locator("td.preview").evaluate_all(
        "cells => cells.every(c => c.getBoundingClientRect().width < 0.5 * innerWidth)"
    )
    await page.screenshot(path=str(shots / "console-queue.png"))

    await page.keyboard.press("n")
    await expect(page).to_have_url(re.compile(r"/console/tasks/"))
    await page.keyboard.press("c")
    # The default pack wants a reason for every decision: the box says so, the server holds it.
    reason = page.locator("#reason")
    await expect(reason).to_have_attribute("aria-required", "true")
    await expect(page.locator("#reason-rule")).to_contain_text("every decision needs a reason")
    await page.keyboard.press("t")
    await page.keyboard.press(" ")
    await page.keyboard.press("Enter")
    await expect(page.locator("#error")).to_contain_text("every decision needs a reason")
    await page.keyboard.press("c")
    await page.keyboard.press("r")
    await page.keyboard.type("模型判断合理")
    await page.keyboard.press("Enter")
    await expect(page.locator("#message")).to_contain_text("decided")
    # The page right after the decision: its figures count after it.
    await expect(rows).to_have_count(len(posts) - 1)
    assert await page.locator("#depth").inner_text() == str(len(posts) - 1)
    assert not errors and not dialogs


async def test_a_long_post_keeps_its_tail_and_its_controls_in_view(
    console: Console, page: object, shots: Path
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    post = new_test_post(text=long_post_text())
    decision = contested(post).model_copy(update={"input_truncated": True})
    await produce(
        console.settings, (Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)
    )
    await console.wait_tasks(1)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    await console.add_reviewer("alice", ("acme",))
    async with console.client("alice") as http:  # the API says it too
        assert (await http.get(f"/api/v1/tasks/{tid}")).json()["input_truncated"] is True
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await log_in(page, console, "alice")

    await page.keyboard.press("n")
    await expect(page).to_have_url(re.compile(f"/console/tasks/{tid}$"))
    await expect(page.locator("#truncated-note")).to_contain_text("shortened text")
    tail = page.locator("#post-tail")
    await expect(tail).to_contain_text(LAST)
    await expect(page.locator("#post-middle-text")).to_be_hidden()
    for control in ("#outcome-confirm", "#verdict-unsafe", "#reason", "#submit"):
        await expect(page.locator(control)).to_be_in_viewport()
    # The whole tail, its last sentence included, without scrolling or a click.
    await expect(tail).to_be_in_viewport(ratio=1)
    await page.screenshot(path=str(shots / "console-long-post.png"))

    await page.keyboard.press("m")  # unfold the middle (a click on its summary works too)
    middle = page.locator("#post-middle-text")
    await expect(middle).to_be_visible()
    shown = await page.locator("#post-head").inner_text()
    shown += await middle.inner_text() + await tail.inner_text()
    assert shown == post.text  # folded, never dropped
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    await expect(page.locator("#post-head")).not_to_be_in_viewport()
    for control in ("#outcome-confirm", "#reason", "#submit"):
        await expect(page.locator(control)).to_be_in_viewport()  # sticky

    # On a narrow screen the controls sit below the text, stuck to the bottom of the window.
    await page.set_viewport_size({"width": 600, "height": 800})
    for scroll in ("0", "document.body.scrollHeight / 2"):
        await page.evaluate(f"window.scrollTo(0, {scroll})")
        for control in ("#outcome-confirm", "#submit"):
            await expect(page.locator(control)).to_be_in_viewport()
    await page.set_viewport_size(VIEWPORT)  # type: ignore[arg-type]

    # A refused decision: the label, the tags and the reason come back as submitted.
    long_reason = "该帖以长篇无害内容掩盖结尾的地域攻击与暴力煽动,应当拦截处理,不能放行。" * 2
    assert len(long_reason) > REVIEW_REASON_MAX
    await page.keyboard.press("3")
    await page.keyboard.press("r")
    await page.keyboard.type(long_reason)
    counter = page.locator("#reason-count")
    over = len(long_reason) - REVIEW_REASON_MAX
    await expect(counter).to_have_text(
        f"{len(long_reason)} / {REVIEW_REASON_MAX} — {over} too many: shorten it"
    )
    await expect(counter).to_have_class(re.compile(r"\bover\b"))
    await expect(page.locator("#reason")).to_have_value(long_reason)  # nothing cut while typing
    await page.keyboard.press("Escape")
    await page.keyboard.press("t")
    await page.keyboard.press("t")
    await page.keyboard.press(" ")
    await page.keyboard.press("Enter")
    await expect(page.locator("#error")).to_contain_text(
        f"{len(long_reason)} characters, {over} over the limit of {REVIEW_REASON_MAX}"
    )
    await expect(page.locator("#outcome-correct")).to_be_checked()
    await expect(page.locator("#verdict-unsafe")).to_be_checked()
    await expect(page.locator("input.tag").nth(1)).to_be_checked()
    await expect(page.locator("#reason")).to_have_value(long_reason)
    await expect(counter).to_contain_text(f"{over} too many")
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0

    await page.fill("#reason", long_reason[:REVIEW_REASON_MAX])
    await expect(counter).to_have_text(f"{REVIEW_REASON_MAX} / {REVIEW_REASON_MAX}")
    await page.press("#reason", "Enter")
    await expect(page.locator("#message")).to_contain_text("unsafe → block")
    [review] = await read_topic(console.settings, Topic.REVIEWS, 1)
    assert review["reason"] == long_reason[:REVIEW_REASON_MAX]
    assert review["tags"] == ["地域攻击"]
    assert not errors
