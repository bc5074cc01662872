"""The seed's web page (issue 20) in real Chromium (Playwright driving Debian's
`/usr/bin/chromium`, as the review console's tests do).

Against the real stack (triage, the scorer on the tiny vLLM model, `guardstream api` as its own
process): a post typed and sent with the keyboard only is decided by the model, the card and
the JSON agree, the same text again is a cache hit, response moderation sends the prompt, a
pack chosen sets the tenant, and hostile text stays text. Against the page alone (its router
served by uvicorn here, answers injected at the browser's network layer, the way a fault is):
hostile answer values (written, and drawn by Hypothesis) are shown literally, every refusal
status is a readable message, and an API key travels only in the Authorization header and
lives in session storage only.

The page with an answer is saved as `api-page.png` (`API_PAGE_SCREENSHOTS`, e.g. `docs/assets`,
regenerates the docs' picture; otherwise it goes to the test's temporary folder)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from guardstream.api import page as api_page
from guardstream.api.gate import Gate
from guardstream.contracts.events import Decision, Source, Verdict
from guardstream.policy import load_registry
from guardstream.runtime.settings import Settings
from guardstream.scorer.vllm_engine import VllmGuardEngine
from tests.conftest import free_port, missing
from tests.integration.api.conftest import add_key
from tests.integration.api.test_api import SAFE, UNSAFE, api_stack, hostile_text, json_values
from tests.integration.review.conftest import CHROMIUM, FLAGS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

VIEWPORT = {"width": 1280, "height": 1000}
HOSTILE_TEXT = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> \u202eevil'
# An answer no honest API gives, as a broken or hostile upstream might: markup, NUL, bidi.
HOSTILE_REASON = '<img src=x onerror="window.__pwned=3">\u202eesrever\u0000 & <b>bold</b>'
HOSTILE_CATEGORIES = ["<script>window.__pwned=4</script>", "\u202eViolent\u0000"]


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - once, before the browser starts
        missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
            )
            yield page
            assert errors == []  # no script error, nothing the CSP had to refuse
        finally:
            await browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("API_PAGE_SCREENSHOTS") or tmp_path)


@asynccontextmanager
async def page_api(
    settings: Settings, engine: VllmGuardEngine, logs: Path
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The API as `api_stack` runs it, and a key per tenant the page test posts as (`default`
    and `health-forum`): the page types one into its key field, as a user pastes it."""
    keys = {tenant: await add_key(settings, tenant) for tenant in ("default", "health-forum")}
    async with api_stack(settings, engine, logs) as (_pipeline, url):
        yield url, keys


@asynccontextmanager
async def page_only() -> AsyncIterator[str]:
    """The page's own router (real files, real headers, the shipped packs) under uvicorn."""
    app = FastAPI()
    Gate(None, None, retry_after_s=1).install(app)  # auth off, as `GUARDSTREAM_API_AUTH=off`
    app.include_router(api_page.router(load_registry(None)))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def focused(page: Any) -> str:
    return str(await page.evaluate("document.activeElement && document.activeElement.id"))


async def tab_to(page: Any, element_id: str, key: str = "Tab", most: int = 10) -> None:
    """Press `key` (Tab, Shift+Tab) until `element_id` has the focus."""
    for _ in range(most):
        if await focused(page) == element_id:
            return
        await page.keyboard.press(key)
    raise AssertionError(f"Tab never reached #{element_id} (at #{await focused(page)})")


async def send_with_keyboard(page: Any, chord: str = "Control+Enter") -> dict[str, Any]:
    """Press the chord and wait for the answer; the JSON the page shows, parsed."""
    await page.keyboard.press(chord)
    await page.wait_for_function(
        "() => document.getElementById('result').getAttribute('aria-busy') === 'false'"
        " && document.getElementById('raw').textContent !== ''"
    )
    raw = await page.text_content("#raw")
    status, _, body = raw.partition("\n")
    return {"status": int(status.removeprefix("HTTP ")), "body": json.loads(body)}


async def card(page: Any) -> dict[str, str]:
    fields = ("label", "action", "confidence", "reason", "source", "rule", "policy", "latency")
    shown = {f: await page.text_content(f"#card-{f}") for f in fields}
    shown["badge"] = await page.text_content("#card-verdict")
    shown["categories"] = await page.eval_on_selector_all(
        "#card-categories li", "items => items.map(i => i.textContent)"
    )
    shown["source_value"] = await page.get_attribute("#card-source", "data-source")
    return shown


async def clear_result(page: Any) -> None:
    await page.evaluate("document.getElementById('raw').textContent = ''")


async def test_a_post_typed_and_sent_with_the_keyboard_is_decided_and_shown(
    settings: Settings,
    engine: VllmGuardEngine,
    tmp_path: Path,
    browser_page: Any,
    shots: Path,
) -> None:
    from playwright.async_api import expect

    page = browser_page
    async with page_api(settings, engine, tmp_path) as (url, keys):
        loaded = await page.goto(url + "/")
        assert loaded.status == 200
        assert "script-src 'self'" in loaded.headers["content-security-policy"]
        # Without a key the packs are not listed (GET /v1/packs is keyed, as every /v1 route).
        await expect(page.locator("#pack option")).to_have_count(1)
        await expect(page.locator("#pack option")).to_contain_text("packs not listed")

        # Tab order: the mode, the text, the pack, tenant, region, key, the button.
        order = []
        for _ in range(7):
            await page.keyboard.press("Tab")
            order.append(await focused(page))
        assert order == ["mode-prompt", "text", "pack", "tenant", "region", "api-key", "submit"]
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("", "none")  # the focus is visible
        await page.focus("#api-key")
        await page.keyboard.type(keys["default"])
        await page.keyboard.press("Tab")  # leaving the field lists the key's packs
        # The default tenant's key lists the packs for every tenant, and no other tenant's.
        listed = page.locator("#pack option")
        await expect(listed.first).not_to_contain_text("packs not listed")
        assert "health-forum" not in " ".join(await listed.all_inner_texts())

        await tab_to(page, "text", "Shift+Tab")
        await page.keyboard.type(UNSAFE)
        answer = await send_with_keyboard(page)
        assert answer["status"] == 200, answer
        decision = Decision.from_json(json.dumps(answer["body"]).encode())
        assert (decision.verdict, decision.source) == (Verdict.UNSAFE, Source.MODEL)
        shown = await card(page)
        assert shown["badge"] == "UNSAFE" and shown["label"] == "unsafe"
        assert shown["action"] == decision.action.value
        assert decision.confidence is not None
        floored = Decimal(repr(decision.confidence)).quantize(Decimal("0.01"), ROUND_FLOOR)
        assert shown["confidence"] == f"{floored} ({decision.confidence})"
        assert f"{floored}" in decision.reason  # as the reason writes it
        assert shown["categories"] == list(decision.categories) == ["Violent"]
        assert shown["reason"] == decision.reason
        assert shown["source_value"] == "model" and shown["source"].startswith("model")
        assert shown["policy"] == decision.policy
        assert shown["latency"].endswith("ms (round trip, measured by this page)")
        assert await page.get_attribute("#card", "class") == "card verdict-unsafe"
        await page.screenshot(path=str(shots / "api-page.png"), full_page=True)

        # The same text again, with the other chord (Cmd+Enter on a Mac): a cache hit.
        await clear_result(page)
        again = await send_with_keyboard(page, "Meta+Enter")
        assert again["body"]["source"] == "cache"
        assert again["body"]["post_id"] != decision.post_id
        assert (await card(page))["source_value"] == "cache"

        # Response moderation: the prompt box appears and its text is sent as `prompt`.
        requests: list[dict[str, Any]] = []
        page.on(
            "request",
            lambda r: (
                requests.append(json.loads(r.post_data)) if r.url.endswith("/v1/moderate") else None
            ),
        )
        await page.focus("#mode-prompt")
        await page.keyboard.press("ArrowDown")
        await expect(page.locator("#prompt")).to_be_visible()
        await page.keyboard.press("Tab")
        assert await focused(page) == "prompt"
        await page.keyboard.type("What should I do this weekend?")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Control+A")
        await page.keyboard.type(SAFE)
        await clear_result(page)
        responded = await send_with_keyboard(page)
        assert responded["status"] == 200, responded
        assert requests[-1]["prompt"] == "What should I do this weekend?"
        assert requests[-1]["text"] == SAFE
        assert (await card(page))["label"] == responded["body"]["verdict"]

        # Another tenant's key lists its own pack; chosen with the keyboard, it sets the
        # tenant, and the answer names that pack.
        await page.fill("#api-key", keys["health-forum"])
        await page.focus("#api-key")
        await page.keyboard.press("Tab")
        await expect(page.locator("#pack option")).to_have_count(3)  # default + its own two
        await page.focus("#pack")
        await page.keyboard.press("ArrowDown")
        assert await page.input_value("#tenant") == "health-forum"
        await clear_result(page)
        forum = await send_with_keyboard(page)
        assert forum["body"]["tenant"] == "health-forum"
        assert forum["body"]["policy"].startswith("health-forum@")
        assert (await card(page))["policy"] == forum["body"]["policy"]

        # Hostile text is text: kept as typed, never run; with a NUL it is refused, readably.
        await page.focus("#mode-prompt")
        await page.keyboard.press("Space")
        await page.fill("#text", HOSTILE_TEXT)
        await page.focus("#text")
        await clear_result(page)
        hostile = await send_with_keyboard(page)
        assert hostile["status"] in (200, 422), hostile
        assert await page.input_value("#text") == HOSTILE_TEXT
        await page.fill("#text", "hello\u0000world")
        await page.focus("#text")
        await clear_result(page)
        refused = await send_with_keyboard(page)
        assert refused["status"] == 422
        assert refused["body"]["reason"] == "forbidden_character"
        await expect(page.locator("#error")).to_contain_text("422")
        await expect(page.locator("#error")).to_contain_text("forbidden_character")
        assert await page.is_hidden("#card")
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("#result :is(img, script, b)").count() == 0


async def test_hostile_answer_values_are_shown_as_text(browser_page: Any) -> None:
    page = browser_page
    decision = {
        "verdict": "unsafe",
        "action": "block",
        "categories": HOSTILE_CATEGORIES,
        "confidence": 0.912,
        "rule": "<u>rule</u>",
        "reason": HOSTILE_REASON,
        "source": "cache",
        "matched_content_key": "k",
        "policy": "<i>default@1</i>",
        "model": "tiny",
        "post_id": "p\u202e1",
    }
    async with page_only() as url:
        await page.route(
            "**/v1/moderate",
            lambda route: route.fulfill(
                status=200, content_type="application/json", body=json.dumps(decision)
            ),
        )
        await page.goto(url + "/")
        await page.focus("#text")
        await page.keyboard.type("anything")
        answer = await send_with_keyboard(page)
        shown = await card(page)
    assert answer["body"] == decision  # the raw JSON: bidi controls escaped, values intact
    raw = await page.text_content("#raw")
    assert "\\u202e" in raw and "\u202e" not in raw
    assert shown["reason"] == HOSTILE_REASON
    assert shown["categories"] == HOSTILE_CATEGORIES
    assert shown["policy"] == "<i>default@1</i>"
    assert shown["rule"] == "<u>rule</u>"
    assert shown["source"] == "cache: a near-duplicate of an earlier post"
    assert shown["confidence"] == "0.91 (0.912)"
    assert await page.text_content("#card-post") == "p\u202e1"
    assert await page.locator("#result :is(img, script, b, i, u)").count() == 0
    assert await page.evaluate("window.__pwned") is None
    # An answer's own bidi controls stay inside its field.
    assert (
        await page.evaluate("getComputedStyle(document.getElementById('card-reason')).unicodeBidi")
        == "isolate"
    )


def hostile_answers(examples: int) -> list[str]:
    """Answers (JSON text) with a hostile value, or a value of any type, in every field the
    card shows."""
    fields = ("verdict", "action", "confidence", "reason", "source", "rule", "policy")
    answer = st.fixed_dictionaries(
        {name: hostile_text() | json_values() for name in fields}
        | {"categories": st.lists(hostile_text(), max_size=3) | json_values()},
        optional={"matched_content_key": hostile_text(), "post_id": hostile_text()},
    )
    drawn: list[str] = []

    @hypothesis_settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(answer)
    def collect(value: dict[str, object]) -> None:
        drawn.append(json.dumps(value))  # lone surrogates as `\udXXX`, as a hostile API would

    collect()
    return drawn


# In the page: every string the card shows of the answer is the answer's string, as written;
# an answer that is no JSON for a browser (`Infinity`, which Python's `json` writes) is no card
# but a message.
SHOWN_AS_SENT = """() => {
  const raw = document.getElementById('raw').textContent;
  let body;
  try {
    body = JSON.parse(raw.slice(raw.indexOf('\\n') + 1));
  } catch (_) {
    return document.getElementById('card').hidden && !document.getElementById('error').hidden;
  }
  const text = (id) => document.getElementById(id).textContent;
  const items = [...document.querySelectorAll('#card-categories li')].map((li) => li.textContent);
  const same = (value, shown) => typeof value !== 'string' || value === shown;
  return same(body.reason, text('card-reason')) && same(body.policy, text('card-policy'))
    && same(body.rule, text('card-rule')) && same(body.verdict, text('card-label'))
    && same(body.action, text('card-action'))
    && (!Array.isArray(body.categories) || body.categories.length === 0
        || body.categories.every((c, i) => String(c) === items[i]));
}"""


async def test_drawn_hostile_answers_never_run_and_read_as_sent(browser_page: Any) -> None:
    page = browser_page
    answers = [*hostile_answers(40), '{"verdict": "unsafe", "confidence": -Infinity}']
    current: list[str] = []

    async def fulfil(route: Any) -> None:
        await route.fulfill(status=200, content_type="application/json", body=current[-1])

    async with page_only() as url:
        await page.route("**/v1/moderate", fulfil)
        await page.goto(url + "/")
        await page.focus("#text")
        await page.keyboard.type("anything")
        for body in answers:
            current.append(body)
            await clear_result(page)
            answer = await send_with_keyboard(page)
            assert answer["body"] == json.loads(body)
            assert await page.evaluate(SHOWN_AS_SENT), body
            assert await page.locator("#card dd :not(ul, li)").count() == 0, body
            assert await page.evaluate("window.__pwned") is None


REFUSALS = [
    (401, {"detail": "missing or unknown API key"}, {}, "Not authorised"),
    (403, {"detail": "this key is for tenant acme"}, {}, "Forbidden"),
    (413, {"reason": "body_too_large", "detail": "body over 1048576 bytes"}, {}, "Too large"),
    (422, {"reason": "text_too_long", "detail": "text over 8000 characters"}, {}, "contract"),
    (429, {"error": "rate limit"}, {"Retry-After": "7"}, "retry after 7 s"),
    (503, {"error": "scorer answered 503"}, {"Retry-After": "1"}, "retry after 1 s"),
]


def answering(status: int, body: object, headers: dict[str, str]) -> Any:
    async def fulfil(route: Any) -> None:
        await route.fulfill(
            status=status, content_type="application/json", body=json.dumps(body), headers=headers
        )

    return fulfil


async def test_every_refusal_is_a_readable_message_with_its_reason(browser_page: Any) -> None:
    page = browser_page
    async with page_only() as url:
        await page.goto(url + "/")
        await page.focus("#text")
        await page.keyboard.type("a post")
        for status, body, headers, words in REFUSALS:
            await page.unroute("**/v1/moderate")
            await page.route("**/v1/moderate", answering(status, body, headers))
            await clear_result(page)
            answer = await send_with_keyboard(page)
            assert answer["status"] == status
            message = await page.text_content("#error")
            assert await page.is_visible("#error") and await page.is_hidden("#card")
            assert f"HTTP {status}" in message and words in message
            for value in body.values():
                assert value in message  # the API's reason, word for word
            assert await page.get_attribute("#error", "role") == "alert"

        await page.unroute("**/v1/moderate")
        await page.route(
            "**/v1/moderate",
            lambda route: route.fulfill(
                status=202,
                content_type="application/json",
                body=json.dumps({"escalated": True, "post_id": "api-9"}),
            ),
        )
        await clear_result(page)
        await send_with_keyboard(page)
        assert "GET /v1/decisions/api-9" in await page.text_content("#status")


async def test_the_api_key_travels_in_the_header_and_stays_in_the_tab(
    browser_page: Any,
) -> None:
    from playwright.async_api import expect

    page = browser_page
    key = "gs_page_test_key_0123456789"
    seen: list[tuple[str, dict[str, str], str]] = []

    async def answer(route: Any) -> None:
        request = route.request
        seen.append((request.url, await request.all_headers(), request.post_data or ""))
        if request.url.endswith("/v1/packs") and "authorization" not in request.headers:
            await route.fulfill(status=401, content_type="application/json", body="{}")
        elif request.url.endswith("/v1/packs"):
            await route.continue_()
        else:
            await route.fulfill(
                status=422, content_type="application/json", body='{"reason": "empty_text"}'
            )

    async with page_only() as url:
        await page.route("**/v1/**", answer)
        await page.goto(url + "/")
        # Without a key, a keyed API lists no packs, and says why.
        await expect(page.locator("#pack")).to_contain_text("enter an API key")
        await page.focus("#api-key")
        await page.keyboard.type(key)
        await page.keyboard.press("Tab")  # leaving the field lists the packs with the key
        shipped = len(load_registry(None).packs)  # auth off: every pack, no tenant to narrow
        await expect(page.locator("#pack option")).to_have_count(shipped)
        await page.focus("#text")
        await send_with_keyboard(page)
        moderate = [s for s in seen if s[0].endswith("/v1/moderate")]
        assert moderate and moderate[-1][1]["authorization"] == f"Bearer {key}"
        assert all(key not in u and key not in body for u, _, body in seen)
        assert await page.evaluate("sessionStorage.getItem('guardstream.apiKey')") == key
        assert await page.evaluate("localStorage.length") == 0
        assert key not in page.url

        await page.reload()  # the same tab keeps it
        assert await page.input_value("#api-key") == key
        other = await page.context.browser.new_context()  # another tab's session: it is gone
        try:
            fresh = await other.new_page()
            await fresh.goto(url + "/")
            assert await fresh.input_value("#api-key") == ""
        finally:
            await other.close()
        await page.fill("#api-key", "")
        assert await page.evaluate("sessionStorage.getItem('guardstream.apiKey')") is None
