"""The console in a real browser: Playwright drives Debian's Chromium (`/usr/bin/chromium`,
installed by apt in `.ci/run`; never `playwright install`). A reviewer logs in, works an item
with the keyboard only, and the published Review and human Decision are read off the broker;
a senior works the blind QA queue the same way."""

from __future__ import annotations

import re

import pytest

from guardstream.contracts.events import utcnow
from guardstream.contracts.topics import Topic
from guardstream.review.logic import Role, task_id
from guardstream.review.qa_period import parse_period
from tests.integration.review.conftest import (
    PASSWORD,
    Console,
    contested,
    new_test_post,
    produce,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def test_a_reviewer_works_an_item_with_the_keyboard(console: Console, page: object) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    post = new_test_post(text="那个省的人都是骗子,大家小心。")
    decision = contested(post)
    await produce(
        console.settings, (Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)
    )
    await console.wait_tasks(1)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    await console.add_reviewer("alice", ("acme",))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(console.base_url + "/console")
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await page.fill("#reviewer", "alice")
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await expect(page.locator("#depth")).to_have_text("1")
    countdown = page.locator("td .countdown").first
    await expect(countdown).to_have_text(re.compile(r"^1h 5\d+m left$"))

    await page.keyboard.press("n")  # next task
    await expect(page).to_have_url(re.compile(f"/console/tasks/{tid}$"))
    await expect(page.locator("#post-text")).to_have_text(post.text)
    await expect(page.locator("#model-verdict")).to_have_text("controversial")

    await page.keyboard.press("3")  # correct the label to unsafe
    await expect(page.locator("#outcome-correct")).to_be_checked()
    await expect(page.locator("#verdict-unsafe")).to_be_checked()
    await page.keyboard.press("Enter")  # without reason and tag: refused, nothing stored
    await expect(page.locator("#error")).to_contain_text("reason")
    assert (await console.sql("SELECT count(*) AS n FROM reviews"))[0]["n"] == 0

    await page.keyboard.press("3")
    await page.keyboard.press("r")
    await page.keyboard.type("地域攻击,以偏概全")
    await page.keyboard.press("Escape")
    await page.keyboard.press("t")  # first quick tag (地域攻击 is the second)
    await page.keyboard.press("t")
    await page.keyboard.press(" ")
    await expect(page.locator("input.tag").nth(1)).to_be_checked()
    await page.keyboard.press("Enter")
    await expect(page.locator("#message")).to_contain_text("unsafe → block")
    assert not errors

    reviews = await read_topic(console.settings, Topic.REVIEWS, 1)
    assert len(reviews) == 1
    assert reviews[0]["reviewer"] == "alice" and reviews[0]["verdict"] == "unsafe"
    assert reviews[0]["reason"] == "地域攻击,以偏概全" and reviews[0]["tags"] == ["地域攻击"]
    blocks = await read_topic(console.settings, Topic.BLOCK, 1)
    assert blocks[0]["source"] == "human" and blocks[0]["post_id"] == post.post_id


async def test_a_senior_works_the_qa_queue_blind_with_the_keyboard(
    console: Console, page: object
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    post = new_test_post(text="那个省的人都是骗子,大家小心。")
    decision = contested(post)
    await produce(
        console.settings, (Topic.POSTS, post, post.post_id), (Topic.REVIEW, decision, post.post_id)
    )
    await console.wait_tasks(1)
    tid = task_id(post.tenant, post.post_id, decision.policy)
    await console.add_reviewer("alice", ("acme",))
    await console.add_reviewer("sue", ("acme",), role=Role.SENIOR)
    async with console.client("alice") as http:
        first = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={"outcome": "confirm", "reason": "同意模型判断", "tags": ["政治隐喻"]},
        )
        assert first.status_code == 200, first.text
    period = utcnow().strftime("%Y-%m")
    sampled = await console.review.services.qa.sample(parse_period(period))
    assert sampled.sampled == 1
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(console.base_url + "/console/login")
    await page.fill("#reviewer", "sue")
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await page.click("#qa-link")
    await expect(page.locator("#qa-undecided")).to_have_text("1")
    await page.click("a.qa-open")
    await expect(page).to_have_url(re.compile(f"/console/qa/{tid}$"))
    await expect(page.locator("#post-text")).to_have_text(post.text)
    assert "confirm" not in (await page.content())  # nothing of the first review shows

    await page.keyboard.press("1")  # her own label: safe
    await expect(page.locator("#verdict-safe")).to_be_checked()
    await page.keyboard.press("r")
    await page.keyboard.type("泛指,不构成地域攻击")
    await page.keyboard.press("Escape")
    await page.keyboard.press("t")
    await page.keyboard.press(" ")
    await page.keyboard.press("Enter")
    await expect(page.locator("#message")).to_contain_text(
        "you said safe, the first review said controversial (disagree)"
    )
    await expect(page.locator("#qa-queue")).to_contain_text("nothing to re-review")
    assert not errors
    (batch,) = await console.sql("SELECT * FROM qa_batches WHERE period = $1", period)
    assert batch["closed_at"] is not None and batch["alert_id"]  # alice: 0 of 1 agreed
