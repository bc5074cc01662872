"""The seed's web page at `/`: one box, one post, the decision as a card and as JSON.

The page is static files (`api/static/`: HTML, CSS, JS; nothing from elsewhere, so it works
offline) that call `POST /v1/moderate` with `fetch`, and `GET /v1/packs`, the packs a post
can be judged by (which tenants and regions each claims; nothing else of a pack). Every answer
value reaches the page's DOM as text (`textContent`), never as markup, and the page is served
under a Content-Security-Policy that allows only its own script and style files, so a hostile
value in an answer cannot run. An API key typed into the page is sent as
`Authorization: Bearer` and kept in the tab's `sessionStorage` only, never in a URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from guardstream.api.gate import caller
from guardstream.policy import PolicyRegistry

STATIC = Path(__file__).with_name("static")

# Only the page's own files; `connect-src 'self'` for its calls to this API; no inline script
# or style, no frames, no form posts (the form is sent by the script, never by the browser).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

# name served under /page/ (or "" for `/`) → (file, media type)
_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "page.js": ("page.js", "text/javascript; charset=utf-8"),
    "page.css": ("page.css", "text/css; charset=utf-8"),
}


class PackView(BaseModel):
    """A policy pack as `GET /v1/packs` lists it: who it applies to, not what it holds."""

    id: str
    version: str
    ref: str
    description: str | None
    tenants: list[str]  # "*": every tenant without a pack of its own
    regions: list[str] | None  # None: any region
    default: bool


class PackList(BaseModel):
    packs: list[PackView]


def pack_list(policies: PolicyRegistry, tenant: str | None = None) -> PackList:
    """The packs in force, the platform default first; with a `tenant`, only the packs that can
    judge its posts (its own and those for every tenant), each naming no other tenant: a key
    holder learns nothing of the platform's other tenants."""
    packs = sorted(policies.packs, key=lambda p: (not p.is_default, p.id))
    views = []
    for p in packs:
        tenants = list(p.tenants)
        if tenant is not None:
            tenants = [t for t in tenants if t in (tenant, "*")]
            if not tenants:
                continue
        views.append(
            PackView(
                id=p.id,
                version=p.version,
                ref=p.ref,
                description=p.description,
                tenants=tenants,
                regions=None if p.regions is None else list(p.regions),
                default=p.is_default,
            )
        )
    return PackList(packs=views)


def _headers(media_type: str) -> dict[str, str]:
    return {
        "Content-Type": media_type,
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def router(policies: PolicyRegistry) -> APIRouter:
    """`/` (the page), `/page/{page.js,page.css}` and `GET /v1/packs`."""
    routes = APIRouter()
    files = {name: ((STATIC / file).read_bytes(), media) for name, (file, media) in _FILES.items()}

    def serve(name: str) -> Response:
        body, media = files[name]
        return Response(body, 200, _headers(media))

    @routes.get("/", include_in_schema=False)
    async def index() -> Response:
        return serve("")

    @routes.get("/page/page.js", include_in_schema=False)
    async def script() -> Response:
        return serve("page.js")

    @routes.get("/page/page.css", include_in_schema=False)
    async def style() -> Response:
        return serve("page.css")

    @routes.get("/v1/packs", response_model=PackList)
    async def list_packs(request: Request) -> Response:
        """The policy packs that can judge the caller's posts: id, version, description and
        the tenants and regions each applies to (a post's pack is chosen by its `tenant` and
        `region`); a key's list names its own tenant only."""
        listed = pack_list(policies, caller(request).tenant)
        return Response(listed.model_dump_json(), 200, media_type="application/json")

    return routes
