"""The seed's web page (`api.page`) as files and headers: a strict CSP on every file, nothing
fetched from elsewhere, every control labelled, no answer value written as markup, and
`GET /v1/packs` listing who each shipped pack applies to and nothing more. The page in a
browser: `tests/integration/api/test_api_page.py`."""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from guardstream.api import page
from guardstream.api.gate import Gate
from guardstream.policy import PACKS_DIR, load_registry

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[3]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    Gate(None, None, retry_after_s=1).install(app)  # auth off, as `GUARDSTREAM_API_AUTH=off`
    app.include_router(page.router(load_registry(None)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.parametrize(
    ("path", "media"),
    [("/", "text/html"), ("/page/page.js", "text/javascript"), ("/page/page.css", "text/css")],
)
async def test_every_file_of_the_page_is_served_under_a_strict_csp(
    client: httpx.AsyncClient, path: str, media: str
) -> None:
    answer = await client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(media)
    csp = dict(
        (d.split(" ", 1)[0], d.split(" ", 1)[1:])
        for d in (part.strip() for part in answer.headers["content-security-policy"].split(";"))
    )
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'none'"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, str] = {}  # id -> tag
        self.labelled: set[str] = set()
        self.inline: list[str] = []  # inline script, style attributes, event handlers
        self.urls: list[str] = []
        self._tag_stack: list[str] = []
        self._in_label_wrapping: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in {"input", "textarea", "select", "button"}:
            self.controls[a.get("id") or f"<{tag} without id>"] = tag
            if any(self._in_label_wrapping):
                self.labelled.add(a.get("id") or "")
        if tag == "label":
            self._in_label_wrapping.append("for" not in a)
            if "for" in a:
                self.labelled.add(a["for"] or "")
        if tag == "script" and "src" not in a:
            self.inline.append("inline <script>")
        self.inline += [f"{tag} {k}" for k in a if k == "style" or k.startswith("on")]
        self.urls += [v for k, v in a.items() if k in {"src", "href", "action"} and v]

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._in_label_wrapping:
            self._in_label_wrapping.pop()


def test_the_page_labels_every_control_and_loads_nothing_from_elsewhere() -> None:
    parsed = _Page()
    parsed.feed((page.STATIC / "index.html").read_text())
    assert {"mode-prompt", "mode-response", "prompt", "text", "pack", "tenant"} <= set(
        parsed.controls
    )
    assert {"region", "api-key", "submit"} <= set(parsed.controls)
    unlabelled = {i for i, tag in parsed.controls.items() if tag != "button"} - parsed.labelled
    assert not unlabelled
    assert parsed.inline == []
    assert all(url.startswith("/") and not url.startswith("//") for url in parsed.urls)
    for name in ("page.js", "page.css"):
        assert not re.search(r"https?://|//[a-z]", (page.STATIC / name).read_text())


def test_no_answer_value_is_written_as_markup() -> None:
    script = (page.STATIC / "page.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    # The key: session storage only, never local storage or a URL.
    assert "localStorage" not in script
    assert "sessionStorage.setItem" in script and "Bearer " in script


async def test_packs_lists_who_each_pack_applies_to_and_nothing_more(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/v1/packs")
    assert answer.status_code == 200
    packs = answer.json()["packs"]
    assert packs[0]["default"] and packs[0]["tenants"] == ["*"]
    by_id = {p["id"]: p for p in packs}
    assert by_id["health-forum"]["tenants"] == ["health-forum"]
    assert by_id["health-forum-cn"]["regions"]
    assert {p["ref"] for p in packs} == {p.ref for p in load_registry(PACKS_DIR).packs}
    assert all(
        set(p) == {"id", "version", "ref", "description", "tenants", "regions", "default"}
        for p in packs
    )


def test_the_page_files_are_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["guardstream"]
    assert "api/static/*" in data
    assert {p.name for p in page.STATIC.iterdir()} == {"index.html", "page.js", "page.css"}


def test_a_keys_pack_list_names_its_own_tenant_only() -> None:
    registry = load_registry(None)
    everyone = page.pack_list(registry)
    claimed = {t for p in everyone.packs for t in p.tenants} - {"*"}
    assert claimed, "a shipped pack names a tenant"
    for tenant in claimed:
        listed = page.pack_list(registry, tenant)
        named = {t for p in listed.packs for t in p.tenants}
        assert named <= {tenant, "*"}
        assert tenant in named
        assert any(p.default for p in listed.packs)  # the platform default judges it too
    stranger = page.pack_list(registry, "a-tenant-no-pack-names")
    assert {t for p in stranger.packs for t in p.tenants} == {"*"}
