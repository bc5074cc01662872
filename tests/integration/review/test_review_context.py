"""Similar earlier decisions and the author's context on the task page (issue 22), against the
real review process, PostgreSQL, the broker and Chromium: a task shows its tenant's exact
duplicate, its punctuation variant and its English translation with their human labels, tags
and reasons, warns that the humans who decided near-identical content disagreed, shows the
author's decided posts, and never shows another tenant's decision on the very same text."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from guardstream.contracts.events import Post
from guardstream.contracts.topics import Topic
from guardstream.review.logic import task_id
from tests.conftest import missing
from tests.integration.review.conftest import (
    CHROMIUM,
    FLAGS,
    PASSWORD,
    Console,
    contested,
    new_test_post,
    produce,
)
from tests.support.processes import env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TARGET = "那个省的人都是骗子，大家小心！"
VIEWPORT = {"width": 1280, "height": 1000}


def post(text: str, author: str, tenant: str = "acme") -> Post:
    return new_test_post(tenant, text).model_copy(update={"author_id": author})


async def wait_indexed(console: Console, n: int, within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (await console.sql("SELECT count(*) AS n FROM task_vectors"))[0]["n"] < n:
        assert asyncio.get_running_loop().time() < deadline, "tasks not indexed"
        await asyncio.sleep(0.2)


def clusters_cli(console: Console, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "guardstream", "feedback", "clusters", *args],
        env=env_for(console.settings),
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return orjson.loads(done.stdout) if "json" in args else None


async def decide(console: Console, reviewer: str, tid: str, verdict: str, reason: str) -> None:
    async with console.client(reviewer) as http:
        response = await http.post(
            f"/api/v1/tasks/{tid}/decision",
            json={"outcome": "correct", "verdict": verdict, "reason": reason, "tags": ["地域攻击"]},
        )
        assert response.status_code == 200, response.text


async def test_the_task_page_shows_similar_decisions_and_the_author(
    console: Console, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex  # one content key: exact duplicates
    earlier = {
        "exact": (post(TARGET, "u-other"), key, "safe", "反讽，并非攻击"),
        "near": (post("那个省的人 都是骗子 大家小心", "u-third"), None, "unsafe", "地域攻击"),
        "translation": (
            post("People from that province are all liars, be careful!", "u-fourth"),
            None,
            "unsafe",
            "regional slur, in English",
        ),
        "unrelated": (post("今天天气很好，我们去公园散步吧。", "u-fifth"), None, "safe", "日常"),
        "by_author": (post("我觉得这家店的服务一般般。", "u-1"), None, "safe", "普通评价"),
        "other_tenant": (post(TARGET, "u-1", "beta"), key, "unsafe", "beta 的判断"),
    }
    target = post(TARGET, "u-1")
    records = []
    for p, content_key, _, _ in [*earlier.values(), (target, key, "", "")]:
        decision = contested(p, content_key=content_key)
        records += [(Topic.POSTS, p, p.post_id), (Topic.REVIEW, decision, p.post_id)]
    await produce(console.settings, *records)
    await console.wait_tasks(len(records) // 2)
    await console.add_reviewer("alice", ("acme",))
    await console.add_reviewer("bob", ("beta",))
    tids = {name: task_id(p.tenant, p.post_id, "default@1") for name, (p, *_) in earlier.items()}
    for name, (p, _, verdict, reason) in earlier.items():
        await decide(console, "bob" if p.tenant == "beta" else "alice", tids[name], verdict, reason)
    await wait_indexed(console, len(records) // 2)
    target_id = task_id("acme", target.post_id, "default@1")

    # The API's task JSON.
    async with console.client("alice") as http:
        body = (await http.get(f"/api/v1/tasks/{target_id}")).json()
    context = body["context"]
    shown = {n["task_id"]: n for n in context["similar"]}
    assert shown[tids["exact"]]["match"] == "exact"
    assert shown[tids["exact"]]["reason"] == "反讽，并非攻击"
    assert shown[tids["near"]]["match"] == "near"
    assert shown[tids["translation"]]["match"] == "semantic"
    assert shown[tids["translation"]]["human_verdict"] == "unsafe"
    assert shown[tids["translation"]]["tags"] == ["地域攻击"]
    assert tids["other_tenant"] not in shown and tids["unrelated"] not in shown
    assert context["conflict"] == ["safe", "unsafe"]
    author = context["author"]
    assert [i["task_id"] for i in author["recent"]] == [tids["by_author"]]
    assert author["decided"] == 1 and author["by_verdict"] == {"safe": 1}
    assert "u-1" not in str(body)  # the author id never leaves the store
    # bob (beta) sees his own tenant's task with acme's decisions nowhere in it.
    async with console.client("bob") as http:
        beta = (await http.get(f"/api/v1/tasks/{tids['other_tenant']}")).json()
        assert (await http.get(f"/api/v1/tasks/{target_id}")).status_code in (403, 404)
    assert not set(tids.values()) & {n["task_id"] for n in beta["context"]["similar"]}
    assert beta["context"]["author"]["decided"] == 0

    # The contested-case report as an operator runs it: acme's slur, its variant and its
    # translation are one cluster; beta's decision on the same text is not in acme's report.
    report = clusters_cli(console, "--tenant", "acme", "--format", "json")
    slur = next(c for c in report if c["size"] >= 3)
    ids = {tids[k] for k in ("exact", "near", "translation")}
    assert {e["task_id"] for e in slur["examples"]} == ids
    assert slur["verdicts"] == {"safe": 1, "unsafe": 2} and slur["tenant"] == "acme"
    assert all(c["tenant"] == "acme" for c in report)
    page = tmp_path / "clusters.html"
    clusters_cli(console, "--format", "html", "--out", str(page))
    assert "<svg" in page.read_text() and "反讽，并非攻击" in page.read_text()

    # The console's task page in Chromium.
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before the browser starts
        missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()  # type: ignore[arg-type]
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if "Content Security" in msg.text else None,
            )
            await page.goto(console.base_url + "/console/login")
            await page.fill("#reviewer", "alice")
            await page.fill("#password", PASSWORD)
            await page.press("#password", "Enter")
            await expect(page).to_have_url(re.compile(r"/console$"))
            await page.goto(f"{console.base_url}/console/tasks/{target_id}")
            await expect(page.locator("#similar-conflict")).to_contain_text("safe / unsafe")
            rows = page.locator("#similar li.neighbour")
            await expect(rows.first).to_have_attribute("data-kind", "exact")
            await expect(rows.first).to_contain_text("反讽，并非攻击")
            await expect(page.locator(f'li[data-task="{tids["translation"]}"]')).to_contain_text(
                "People from that province"
            )
            await expect(page.locator("#author-summary")).to_contain_text("1 decided · 1 safe")
            await expect(page.locator("#author-context li")).to_contain_text("普通评价")
            await expect(page.locator("#controls")).to_be_visible()  # still beside the panels
            shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
            await page.screenshot(path=str(shots / "console-similar.png"), full_page=True)
            assert not errors, errors  # the strict CSP refused nothing
        finally:
            await browser.close()
