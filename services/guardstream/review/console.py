"""The console: server-rendered pages (Jinja2) for reviewers, keyboard-first (`static/`).

A signed session cookie (HttpOnly, SameSite=Strict, Secure unless configured off for local
plain-http use) names a session the store keeps open until logout, expiry, a password change or
the reviewer being disabled; every form post carries the session's CSRF token and is refused
(403, audited) without it.
Pages go through the same review services as the API, so scoping and auditing are identical.
"""

from __future__ import annotations

import asyncio
import html
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from guardstream.contracts.casebook import REASONING_MAX, TITLE_MAX
from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import REVIEW_REASON_MAX
from guardstream.policy.pack import ReasonRequired
from guardstream.review import auth
from guardstream.review import metrics as review_metrics
from guardstream.review.casebook_pdf import casebook_pdf
from guardstream.review.logic import (
    InvalidSubmission,
    Permission,
    Reviewer,
    countdown,
    duration,
    long_text,
    read_form,
    reason_rule,
)
from guardstream.review.services.errors import Forbidden, NotFound, Unauthenticated
from guardstream.review.shield import Edge, Throttled, free_text, identifier
from guardstream.review.store.tasks import QueueFilter
from guardstream.review.wiring import ReviewServices
from guardstream.verdict.author_history import AuthorHistoryStore

COOKIE = "gs_review_session"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


class ConsoleAuth:
    """Issues and reads session cookies with one secret key. `secure`: mark cookies Secure
    (GUARDSTREAM_REVIEW_COOKIE_SECURE); a request that arrived over https, directly or through
    a trusted proxy, gets a Secure cookie either way."""

    def __init__(self, key: bytes, ttl_s: int, *, secure: bool = True) -> None:
        self.key = key
        self.ttl_s = ttl_s
        self.secure = secure


def _svc(request: Request) -> ReviewServices:
    services: ReviewServices = request.app.state.review
    return services


def _auth(request: Request) -> ConsoleAuth:
    console: ConsoleAuth = request.app.state.console_auth
    return console


class NeedLogin(PermanentError):
    """A page asked for without a valid session: go to the login page."""


async def session_of(request: Request) -> tuple[Reviewer, auth.Session]:
    svc = _svc(request).auth
    session = auth.read_session(_auth(request).key, request.cookies.get(COOKIE), time.time())
    reviewer = await svc.from_session(session)
    if session is None or reviewer is None:
        await svc.refusals.record("console", {"path": request.url.path, "why": "no valid session"})
        if request.method == "GET":
            raise NeedLogin
        raise Unauthenticated("no valid session: log in again")
    return reviewer, session


SessionDep = Annotated[tuple[Reviewer, auth.Session], Depends(session_of)]


async def checked_csrf(request: Request, current: SessionDep) -> tuple[Reviewer, auth.Session]:
    form = await request.form()
    submitted = form.get("csrf")
    reviewer, session = current
    if not auth.csrf_ok(session, submitted if isinstance(submitted, str) else None):
        await _svc(request).store.audit.write(
            actor=reviewer.id,
            action="console",
            outcome="denied",
            detail={"path": request.url.path, "why": "missing or wrong CSRF token"},
        )
        review_metrics.denied.add(1, {"reason": "csrf"})
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
    return current


PostSession = Annotated[tuple[Reviewer, auth.Session], Depends(checked_csrf)]

router = APIRouter(prefix="/console", include_in_schema=False)


def page_countdown(deadline: datetime, now: datetime, *, held: bool = False) -> str:
    """`countdown` as the pages show it (`console.js` keeps it live the same way): a held post
    past its deadline did not expire into a downgrade, it is still held."""
    text = countdown(deadline, now)
    if held and text.startswith("expired "):
        return "deadline passed " + text.removeprefix("expired ")
    return text


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    now = _svc(request).queue.now()

    def _countdown(deadline: datetime, held: bool = False) -> str:
        return page_countdown(deadline, now, held=held)

    base: dict[str, Any] = {
        "countdown": _countdown,
        "reviewer": None,
        "csrf": "",
        "message": None,
        "error": None,
    }
    base.update(context)
    who = base["reviewer"]
    base["can_qa"] = (
        isinstance(who, Reviewer) and who.may(Permission.QA) and who.may(Permission.DECIDE)
    )
    response = templates.TemplateResponse(request, name, base, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; form-action 'self';"
        " frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _login_context(request: Request) -> dict[str, Any]:
    # Over plain http a browser may drop the Secure cookie (most keep it for localhost):
    # the page says why a login would not stick, and what to set for local use.
    return {"plain_http": _auth(request).secure and request.url.scheme != "https"}


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", _login_context(request))


@router.post("/login")
async def login(
    request: Request,
    reviewer: Annotated[str, Form(max_length=128)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    edge: Edge = request.app.state.edge
    try:
        identifier(reviewer)
    except ValueError as exc:
        await edge.denied.record("login", {"why": "invalid input", "field": "reviewer"})
        context = _login_context(request) | {"error": f"reviewer id: {exc}"}
        return _page(request, "login.html", context, status=422)
    try:
        await edge.admit_login(reviewer, request.client.host if request.client else None)
        who = await _svc(request).auth.login(reviewer, password)
    except Unauthenticated as exc:
        context = _login_context(request) | {"error": exc.message}
        return _page(request, "login.html", context, status=401)
    except Throttled as exc:
        context = _login_context(request) | {"error": "too many attempts: retry later"}
        page = _page(request, "login.html", context, 429)
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    console = _auth(request)
    cookie, session = auth.issue_session(console.key, who.id, time.time(), console.ttl_s)
    await _svc(request).auth.open_session(who, session)
    secure = console.secure or request.url.scheme == "https"
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=console.ttl_s,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, current: PostSession) -> Response:
    # The session ends on the server: a copy of the cookie kept elsewhere is refused too.
    await _svc(request).auth.logout(*current)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_auth(request).secure or request.url.scheme == "https",
    )
    return response


@router.get("", response_class=HTMLResponse)
async def queue_page(
    request: Request,
    current: SessionDep,
    tenant: str | None = None,
    lang: str | None = None,
    category: str | None = None,
    tag: str | None = None,
    message: str | None = None,
) -> HTMLResponse:
    reviewer, session = current
    filters = QueueFilter(tenant or None, lang or None, category or None, tag or None)
    svc = _svc(request).queue
    tasks, stats = await svc.queue(reviewer, filters, 100)
    previews = await svc.previews(reviewer, tasks)
    return _page(
        request,
        "queue.html",
        {
            "reviewer": reviewer,
            "csrf": session.csrf,
            "tasks": tasks,
            "previews": previews,
            "stats": stats,
            "filters": filters,
            "message": message,
            "avg_response": "–" if stats.avg_response_s is None else duration(stats.avg_response_s),
        },
    )


async def _task_page(
    request: Request,
    reviewer: Reviewer,
    session: auth.Session,
    task_id: str,
    *,
    error: str | None = None,
    form: dict[str, Any] | None = None,
    message: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    svc = _svc(request)
    view = await svc.queue.view(reviewer, task_id)
    context = await svc.context.for_view(reviewer, view)
    # The author's figures, where a pack's rules keep them (None: not kept, or Redis silent).
    # None on a task shown blind (an open QA item), like the context: the author's confirmed
    # count would give its first label away.
    history: AuthorHistoryStore | None = getattr(request.app.state, "author_history", None)
    figures = (
        await history.figures_for_decision(view.task.tenant, view.task.decision_id, time.time())
        if history is not None and not view.blind
        else None
    )
    rule = svc.tasks.reason_required(view.task)
    pack = svc.tasks.pack_for(view.task)
    # Guidelines beside the controls: the pack's categories (the task's first) and its casebook
    # entries for them; a blind view gets no entry built from this very task (its label).
    wanted = set(view.task.categories)
    categories = sorted(pack.categories, key=lambda c: c.name not in wanted)
    cases = await svc.casebook.guidelines(
        reviewer,
        view.task.tenant,
        pack.id,
        view.task.categories,
        view.task.task_id,
        blind=view.blind,
    )
    return _page(
        request,
        "task.html",
        {
            "reviewer": reviewer,
            "csrf": session.csrf,
            "task": view.task,
            "text": view.text,
            "context": context,
            "parts": long_text(view.text.text) if view.text else None,
            "reason_max": REVIEW_REASON_MAX,
            "reason_rule": reason_rule(rule),
            "reason_always": rule is ReasonRequired.ALWAYS,
            "tags": svc.tasks.tags,
            "pack_categories": svc.tasks.categories_for(view.task),
            "can_decide": reviewer.may(Permission.DECIDE),
            "can_read_text": reviewer.may(Permission.READ_TEXT),
            "form": form or {"reason": "", "tags": []},
            "error": error,
            "message": message,
            "author_history": figures.model_dump() if figures is not None else None,
            "guideline_categories": categories,
            "guideline_wanted": wanted,
            "guideline_cases": cases,
            "pack_id": pack.id,
        },
        status=status,
    )


def _label_form(raw: Any) -> dict[str, Any]:
    """The label a reviewer submits from a console form (first review or QA), as submitted:
    what the page shows back when it is refused."""
    return {
        "verdict": raw.get("verdict"),
        "reason": raw.get("reason"),
        "tags": [t for t in raw.getlist("tags") if isinstance(t, str)],
        "refusal": raw.get("refusal"),
        # Only a page that showed the category picker sends them (None: the model's).
        "categories": [c for c in raw.getlist("categories") if isinstance(c, str)]
        if raw.get("categories-shown")
        else None,
    }


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(request: Request, task_id: str, current: SessionDep) -> HTMLResponse:
    return await _task_page(request, current[0], current[1], task_id)


@router.post("/next")
async def next_task(request: Request, current: PostSession) -> Response:
    task = await _svc(request).tasks.claim(current[0])
    if task is None:
        return RedirectResponse("/console?message=" + quote("nothing to review"), 303)
    return RedirectResponse(f"/console/tasks/{task.task_id}", status_code=303)


@router.post("/tasks/{task_id}/release")
async def release(request: Request, task_id: str, current: PostSession) -> Response:
    await _svc(request).tasks.release(current[0], task_id)
    return RedirectResponse("/console?message=" + quote("task released"), 303)


@router.post("/tasks/{task_id}/decide")
async def decide(request: Request, task_id: str, current: PostSession) -> Response:
    reviewer, session = current
    raw = await request.form()
    form = {"outcome": raw.get("outcome"), **_label_form(raw)}
    try:
        result = await _svc(request).tasks.decide(reviewer, task_id, read_form(**form))
    except InvalidSubmission as exc:
        return await _task_page(
            request, reviewer, session, task_id, error=exc.message, form=form, status=422
        )
    done = f"decided: {result.task.human_verdict} → {result.action}" + (
        " (late)" if result.late else ""
    )
    return RedirectResponse("/console?message=" + quote(done), status_code=303)


# --- The casebook (争议案例手册): entries per pack; seniors pin, edit, retire ------------------


@router.get("/casebook", response_class=HTMLResponse)
async def casebook_page(
    request: Request,
    current: SessionDep,
    pack: str | None = None,
    message: str | None = None,
    retired: bool = False,
) -> HTMLResponse:
    reviewer, session = current
    entries = await _svc(request).casebook.entries(reviewer, pack or None, retired=retired)
    packs: dict[str, list[Any]] = {}
    for entry in entries:
        packs.setdefault(f"{entry.tenant} · {entry.pack}", []).append(entry)
    return _page(
        request,
        "casebook.html",
        {
            "reviewer": reviewer,
            "csrf": session.csrf,
            "packs": packs,
            "pack": pack,
            "retired": retired,
            "message": message,
            "can_curate": reviewer.may(Permission.QA),
            "title_max": TITLE_MAX,
            "reasoning_max": REASONING_MAX,
        },
    )


@router.get("/casebook.pdf")
async def casebook_export(
    request: Request, current: SessionDep, tenant: str, pack: str
) -> Response:
    """One pack's casebook of one tenant as a PDF (the page's entries, active only)."""
    reviewer, _ = current
    entries = [
        e for e in await _svc(request).casebook.entries(reviewer, pack) if e.tenant == tenant
    ]
    if not entries:
        raise NotFound("no casebook entries for this tenant and pack")
    now = _svc(request).queue.now()
    pdf = await asyncio.to_thread(casebook_pdf, entries, tenant, pack, now)
    name = quote(f"casebook-{tenant}-{pack}.pdf", safe="")
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _back(pack: str | None, message: str) -> Response:
    query = f"?message={quote(message)}" + (f"&pack={quote(pack)}" if pack else "")
    return RedirectResponse("/console/casebook" + query, status_code=303)


@router.post("/casebook/{entry_id}/pin")
async def casebook_pin(request: Request, entry_id: str, current: PostSession) -> Response:
    raw = await request.form()
    entry = await _svc(request).casebook.pin(current[0], entry_id, raw.get("pinned") != "0")
    return _back(entry.pack, ("pinned: " if entry.pinned else "unpinned: ") + entry.title)


def _edit_form(raw: Any) -> tuple[str, str]:
    """A casebook edit form's title and reasoning; `InvalidSubmission` names the field at fault
    (missing, or holding a control character). Lengths are the service's to check."""
    values = []
    for field in ("title", "reasoning"):
        value = raw.get(field)
        if not isinstance(value, str):
            raise InvalidSubmission(field, "is missing")
        try:
            values.append(free_text(value))
        except ValueError as exc:
            raise InvalidSubmission(field, str(exc)) from exc
    return values[0], values[1]


@router.post("/casebook/{entry_id}/edit")
async def casebook_edit(request: Request, entry_id: str, current: PostSession) -> Response:
    try:
        title, reasoning = _edit_form(await request.form())
        entry = await _svc(request).casebook.edit(current[0], entry_id, title, reasoning)
    except InvalidSubmission as exc:
        return HTMLResponse(
            '<!doctype html><meta charset="utf-8"><title>guardstream review</title>'
            f'<p role="alert" id="error">{html.escape(exc.field)}: {html.escape(exc.message)}</p>'
            '<p><a href="/console/casebook">back to the casebook</a>',
            status_code=422,
        )
    return _back(entry.pack, "edited: " + entry.title)


@router.post("/casebook/{entry_id}/retire")
async def casebook_retire(request: Request, entry_id: str, current: PostSession) -> Response:
    entry = await _svc(request).casebook.retire(current[0], entry_id)
    return _back(entry.pack, "retired: " + entry.title)


# --- QA audit: the senior's blind re-review queue ---------------------------------------------


@router.get("/qa", response_class=HTMLResponse)
async def qa_page(request: Request, current: SessionDep, message: str | None = None) -> Response:
    reviewer, session = current
    svc = _svc(request).qa
    entries = await svc.queue(reviewer, 100)
    report = await svc.report(reviewer, None)
    return _page(
        request,
        "qa.html",
        {
            "reviewer": reviewer,
            "csrf": session.csrf,
            "entries": entries,
            "report": report,
            "message": message,
        },
    )


async def _qa_task_page(
    request: Request,
    reviewer: Reviewer,
    session: auth.Session,
    task_id: str,
    *,
    error: str | None = None,
    form: dict[str, Any] | None = None,
    status: int = 200,
) -> HTMLResponse:
    svc = _svc(request).qa
    entry, text = await svc.view(reviewer, task_id)
    return _page(
        request,
        "qa_task.html",
        {
            "reviewer": reviewer,
            "csrf": session.csrf,
            "entry": entry,
            "task": entry.task,
            "text": text,
            "parts": long_text(text.text) if text else None,
            "reason_max": REVIEW_REASON_MAX,
            "reason_rule": "a QA label always needs a reason (the first reviewer learns from it)",
            "reason_always": True,
            "tags": svc.tags,
            "form": form or {"reason": "", "tags": []},
            "error": error,
        },
        status=status,
    )


@router.get("/qa/{task_id}", response_class=HTMLResponse)
async def qa_task_page(request: Request, task_id: str, current: SessionDep) -> HTMLResponse:
    return await _qa_task_page(request, current[0], current[1], task_id)


@router.post("/qa/{task_id}/decide")
async def qa_decide(request: Request, task_id: str, current: PostSession) -> Response:
    reviewer, session = current
    form = _label_form(await request.form())
    try:
        result = await _svc(request).qa.re_review(reviewer, task_id, read_form(**form), blind=True)
    except InvalidSubmission as exc:
        return await _qa_task_page(
            request, reviewer, session, task_id, error=exc.message, form=form, status=422
        )
    first = result.task.human_verdict.value if result.task.human_verdict else "?"
    said = form["verdict"]
    done = f"QA recorded: you said {said}, the first review said {first}" + (
        " (agree)" if said == first else " (disagree)"
    )
    return RedirectResponse("/console/qa?message=" + quote(done), status_code=303)


def install_console(app: FastAPI, console_auth: ConsoleAuth) -> None:
    app.state.console_auth = console_auth
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)

    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, exc: NeedLogin) -> Response:
        return RedirectResponse("/console/login", status_code=303)
