"""The casebook (争议案例手册, issue 22) against the real review process, PostgreSQL and the
broker: `guardstream feedback casebook` turns a tenant's clusters of contested decisions into
entries linked to their source items; a senior pins, edits and retires them (audited); a
refresh leaves all three as they are; another tenant sees none of it (404); a hostile edit is
a 422 naming the field."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
import warnings
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from guardstream.contracts.casebook import REASONING_MAX, TITLE_MAX, CaseDraft
from guardstream.contracts.events import Post
from guardstream.contracts.topics import Topic
from guardstream.review.logic import Role, task_id
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
from tests.integration.review.test_review_context import decide, wait_indexed
from tests.support.processes import env_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CASES = {
    # name: (text, human verdict, reason)
    "slur": ("那个省的人都是骗子，大家小心！", "unsafe", "地域攻击"),
    "slur_variant": ("那个省的人 都是骗子 大家小心", "unsafe", "地域攻击"),
    "slur_en": ("People from that province are all liars, be careful!", "unsafe", "地域攻击"),
    "weather": ("今天天气很好，我们去公园散步吧。", "safe", "日常"),
}
OPEN_TEXT = "那个地方的人都是骗子，别信他们！"
VIEWPORT = {"width": 1280, "height": 1000}
NOT_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def casebook_cli(console: Console, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "guardstream", "feedback", "casebook", *args],
        env=env_for(console.settings),
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def seed(console: Console) -> dict[str, str]:
    """The cases decided in acme (and one in beta); their task ids by name."""
    posts: dict[str, Post] = {n: new_test_post("acme", t) for n, (t, _, _) in CASES.items()}
    posts["beta"] = new_test_post("beta", CASES["slur"][0])
    posts["open"] = new_test_post("acme", OPEN_TEXT)  # left open: its page shows guidelines
    records = []
    for p in posts.values():
        records += [(Topic.POSTS, p, p.post_id), (Topic.REVIEW, contested(p), p.post_id)]
    await produce(console.settings, *records)
    await console.wait_tasks(len(posts))
    await console.add_reviewer("alice", ("acme",))
    await console.add_reviewer("carol", ("acme",), Role.SENIOR)
    await console.add_reviewer("bob", ("beta",), Role.SENIOR)
    tids = {n: task_id(p.tenant, p.post_id, "default@1") for n, p in posts.items()}
    for name, tid in tids.items():
        if name == "open":
            continue
        verdict, reason = (CASES[name][1:]) if name in CASES else ("unsafe", "beta 的判断")
        await decide(console, "bob" if name == "beta" else "alice", tid, verdict, reason)
    await wait_indexed(console, len(posts))
    return tids


async def test_the_casebook_is_built_curated_and_kept_per_tenant(
    console: Console, tmp_path: Path
) -> None:
    tids = await seed(console)
    assert casebook_cli(console, "--tenant", "acme") == [
        {"tenant": "acme", "pack": "default", "inserted": 2, "updated": 0, "retired": 0, "kept": 0}
    ]
    async with console.client("alice") as http:
        listed = (await http.get("/api/v1/casebook", params={"pack": "default"})).json()
        slur = next(e for e in listed if e["size"] == 3)
        weather = next(e for e in listed if e["size"] == 1)
        # Linked to its source items, with the decided label and the reviewers' reasons.
        assert set(slur["task_ids"]) == {tids["slur"], tids["slur_variant"], tids["slur_en"]}
        assert len(slur["post_ids"]) == 3 and slur["tenant"] == "acme"
        assert slur["human_verdict"] == "unsafe" and slur["reasons"] == ["地域攻击"]
        assert slur["verdicts"] == {"unsafe": 3} and "地域攻击" in slur["title"]
        assert slur["excerpt"] and slur["categories"] == ["Politically Sensitive Topics"]
        assert weather["task_ids"] == [tids["weather"]]
        # A reviewer reads; only a senior curates.
        refused = await http.post(f"/api/v1/casebook/{slur['id']}/pin", json={"pinned": True})
        assert refused.status_code == 403
    # Another tenant's entry is not there for bob (beta), whatever he tries.
    async with console.client("bob") as http:
        assert (await http.get("/api/v1/casebook")).json() == []
        for method, path in [
            ("GET", ""),
            ("POST", "/pin"),
            ("POST", "/retire"),
        ]:
            answer = await http.request(method, f"/api/v1/casebook/{slur['id']}{path}", json={})
            assert answer.status_code == 404, (method, path, answer.text)
        answer = await http.post(
            f"/api/v1/casebook/{slur['id']}/edit", json={"title": "x", "reasoning": "y"}
        )
        assert answer.status_code == 404
    async with console.client("carol") as http:
        pinned = (await http.post(f"/api/v1/casebook/{slur['id']}/pin", json={})).json()
        assert pinned["pinned"] is True and pinned["updated_by"] == "carol"
        edited = await http.post(
            f"/api/v1/casebook/{slur['id']}/edit",
            json={
                "title": "  地域攻击：整体污名化  ",
                "reasoning": "针对一个省份的人的概括性指控。",
            },
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["title"] == "地域攻击：整体污名化" and edited.json()["edited"]
        retired = (await http.post(f"/api/v1/casebook/{weather['id']}/retire")).json()
        assert retired["state"] == "retired"
        again = await http.post(f"/api/v1/casebook/{weather['id']}/retire")
        assert again.status_code == 409
    audit = await console.sql(
        "SELECT action, outcome, actor, tenant FROM audit WHERE action LIKE 'casebook.%'"
        " AND action <> 'casebook.read' ORDER BY id"
    )
    assert [(r["action"], r["outcome"], r["actor"]) for r in audit] == [
        ("casebook.refresh", "ok", "feedback-casebook"),
        ("casebook.pin", "denied", "bob"),
        ("casebook.retire", "denied", "bob"),
        ("casebook.edit", "denied", "bob"),
        ("casebook.pin", "ok", "carol"),
        ("casebook.edit", "ok", "carol"),
        ("casebook.retire", "ok", "carol"),
    ]
    # A refresh replaces nothing a senior touched, and does not bring the retired case back.
    assert casebook_cli(console, "--tenant", "acme", "--pack", "default") == [
        {"tenant": "acme", "pack": "default", "inserted": 0, "updated": 0, "retired": 0, "kept": 1}
    ]
    async with console.client("alice") as http:
        after = (await http.get("/api/v1/casebook", params={"retired": "true"})).json()
    assert {(e["id"], e["state"], e["title"]) for e in after} == {
        (slur["id"], "active", "地域攻击：整体污名化"),
        (weather["id"], "retired", weather["title"]),
    }

    await in_chromium(console, tmp_path, slur["id"], tids["open"])

    # Hostile edits: a 422 naming the field (never echoing the value), or a stored edit.
    base, token = console.base_url, console.tokens["carol"]
    statuses: set[int] = set()

    @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(title=st.text(max_size=TITLE_MAX + 10), reasoning=st.text(min_size=1, max_size=40))
    @example(title="ok", reasoning="fine")  # stored
    @example(title="", reasoning="fine")  # empty
    @example(title="   ", reasoning="fine")  # empty once stripped
    @example(title="x" * (TITLE_MAX + 1), reasoning="fine")  # too long
    @example(title="ok", reasoning="y" * (REASONING_MAX + 1))  # too long
    @example(title="a\x00b", reasoning="fine")  # NUL
    @example(title="ok", reasoning="\x1b[31m")  # a control character
    @example(title="\ud800", reasoning="fine")  # a lone surrogate
    def probe(title: str, reasoning: str) -> None:
        # The stdlib's encoder writes lone surrogates as \u escapes (orjson refuses them).
        content = json.dumps({"title": title, "reasoning": reasoning})
        with httpx.Client(base_url=base, timeout=30) as http:
            answer = http.post(
                f"/api/v1/casebook/{slur['id']}/edit",
                content=content,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        statuses.add(answer.status_code)
        ok = all(
            1 <= len(v.strip()) and len(v) <= limit and not NOT_IN_TEXT.search(v)
            for v, limit in ((title, TITLE_MAX), (reasoning, REASONING_MAX))
        )
        if ok:
            assert answer.status_code == 200, answer.text
        else:
            assert answer.status_code == 422, (answer.status_code, answer.text[:200])
            assert answer.json()["field"] in ("title", "reasoning")
            for value in (title, reasoning):
                if len(value.strip()) >= 4:
                    assert value not in answer.text

    def run_probe() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HypothesisDeprecationWarning)
            probe()

    await asyncio.to_thread(run_probe)
    assert statuses == {200, 422}

    # Erasing a post removes the entries built from it (their text head and reasons).
    await console.add_reviewer("root", ("acme",), Role.ADMIN)
    async with console.client("root") as http:
        erased = await http.post(
            "/api/v1/admin/erasures", json={"tenant": "acme", "post_ids": weather["post_ids"]}
        )
        assert erased.status_code == 200, erased.text
        left = (await http.get("/api/v1/casebook", params={"retired": "true"})).json()
    assert [e["id"] for e in left] == [slur["id"]]
    assert left[0]["excerpt"] is None  # an admin reads no post text


async def in_chromium(console: Console, tmp_path: Path, slur_id: str, open_task: str) -> None:
    """The casebook page (a senior edits an entry), the guidelines beside an open task's
    decision controls, and the pack's PDF (its pages rendered to images, its text read back)."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before the browser starts
        missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    import pypdfium2
    from playwright.async_api import async_playwright, expect

    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
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
            await page.fill("#reviewer", "carol")
            await page.fill("#password", PASSWORD)
            await page.press("#password", "Enter")
            await expect(page).to_have_url(re.compile(r"/console$"))
            await page.click("#casebook-link")
            case = page.locator(f"#case-{slur_id}")
            await expect(case).to_contain_text("地域攻击：整体污名化")
            await expect(case.locator(".badge.pinned")).to_be_visible()
            await expect(page.locator("li.case.retired")).to_have_count(0)
            await case.locator("details.edit summary").click()
            await case.locator("textarea[name=reasoning]").fill("概括性指控一个地区的人：不安全")
            await case.locator("details.edit button").click()
            await expect(page.locator("#message")).to_contain_text("edited: 地域攻击")
            await expect(case.locator(".reasoning")).to_have_text("概括性指控一个地区的人：不安全")
            await page.screenshot(path=str(shots / "console-casebook.png"), full_page=True)

            await page.goto(f"{console.base_url}/console/tasks/{open_task}")
            guidelines = page.locator("#controls #guidelines")
            await expect(guidelines.locator("dt.wanted")).to_have_text(
                "Politically Sensitive Topics"
            )
            await expect(guidelines.locator("#guideline-cases li").first).to_contain_text(
                "地域攻击：整体污名化"
            )
            await page.screenshot(path=str(shots / "console-guidelines.png"), full_page=True)

            pdf = await page.request.get(
                f"{console.base_url}/console/casebook.pdf?tenant=acme&pack=default"
            )
            assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
            body = await pdf.body()
            other = await page.request.get(
                f"{console.base_url}/console/casebook.pdf?tenant=beta&pack=default"
            )
            assert other.status == 404  # beta's entries are not carol's to print
            assert not errors, errors  # the strict CSP refused nothing
        finally:
            await browser.close()
    document = pypdfium2.PdfDocument(body)
    assert len(document) >= 1
    first = document[0]
    text = first.get_textpage().get_text_range()
    assert "地域攻击：整体污名化" in text and "acme" in text
    image = first.render(scale=1).to_pil().convert("L")
    image.save(tmp_path / "casebook-page-1.png")
    dark = float((np.asarray(image) < 128).mean())
    assert 0.001 < dark < 0.5, dark  # printed, not blank


async def test_a_refresh_renews_every_field_of_an_untouched_entry_and_no_pinned_one(
    console: Console,
) -> None:
    """The store's renew (what a refresh writes over an entry only a refresh wrote): every
    content field of the draft lands, in its column; a pinned entry keeps its content."""
    draft = CaseDraft(
        tenant="acme",
        pack="default",
        lang="en",
        anchor=f"a-{uuid.uuid4().hex}",
        title="old title",
        reasoning="old reasoning",
        human_verdict="unsafe",
        verdicts={"unsafe": 2},
        categories=("Violent",),
        reasons=("old reason",),
        excerpt="old excerpt",
        size=2,
        task_ids=("t-old",),
        post_ids=("p-old",),
    )
    store = console.review.services.store
    async with store.transaction() as tx:
        untouched = await tx.casebook.insert(draft)
        pinned = await tx.casebook.insert(replace(draft, anchor=f"a-{uuid.uuid4().hex}"))
    await console.sql("UPDATE casebook SET pinned = true WHERE id = $1", pinned)
    newer = replace(
        draft,
        lang="zh",
        title="新标题",
        reasoning="新的理由",
        human_verdict="safe",
        verdicts={"safe": 3, "unsafe": 1},
        categories=("Financial Fraud", "PII"),
        reasons=("正常讨论", "引用新闻"),
        excerpt=None,
        size=4,
        task_ids=("t-1", "t-2"),
        post_ids=("p-1", "p-2"),
    )
    async with store.transaction() as tx:
        for entry_id in (untouched, pinned):
            await tx.casebook.renew(entry_id, newer)
    async with store.transaction() as tx:
        renewed = await tx.casebook.get(untouched)
        kept = await tx.casebook.get(pinned)
    assert renewed is not None and kept is not None
    content = [f.name for f in fields(CaseDraft) if f.name not in ("tenant", "pack", "anchor")]
    assert {n: getattr(renewed, n) for n in content} == {n: getattr(newer, n) for n in content}
    assert renewed.updated_by is None
    assert {n: getattr(kept, n) for n in content} == {n: getattr(draft, n) for n in content}
