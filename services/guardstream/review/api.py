"""The review JSON API (`/api/v1`, OpenAPI at `/docs` and `/openapi.json`).

Bearer tokens (`POST /api/v1/auth/token`) authenticate every other call. Errors are JSON
`{"detail": ..., "field": ...}` (`ErrorOut`, declared on every route that sends it): 401
no/invalid/expired token, 403 role or tenant not allowed, 404 no such task (also for another
tenant's task), 409 state conflict, 413 body too large, 422 invalid input (the value is never
echoed back), 429 too many logins (per id, per address, or at once) or anonymous requests
(Retry-After), 503 busy (Retry-After) or
the audit row could not be written (then nothing was done). The edge (`shield`) answers 413,
429, 503 and 422 for control characters before a handler runs.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from guardstream.contracts.events import REVIEW_REASON_MAX, ReviewOutcome, Verdict
from guardstream.review import metrics as review_metrics
from guardstream.review.auth import HashPoolBusy
from guardstream.review.context import DecidedItem, ReviewContext
from guardstream.review.logic import (
    InvalidSubmission,
    Reviewer,
    SubmissionForm,
    Task,
    countdown,
)
from guardstream.review.services.auth import AuthService
from guardstream.review.services.common import Decided
from guardstream.review.services.context import ContextService
from guardstream.review.services.errors import ReviewError
from guardstream.review.services.qa import QaService
from guardstream.review.services.queue import QueueService, TaskView
from guardstream.review.services.tasks import TaskService
from guardstream.review.shield import (
    ID_PATTERN,
    TEXT_PATTERN,
    Edge,
    Throttled,
    free_text,
    identifier,
    secret_text,
)
from guardstream.review.store.audit import AuditFailed
from guardstream.review.store.tasks import QueueFilter, QueueStats
from guardstream.review.wiring import ReviewServices


def services_of(request: Request) -> ReviewServices:
    services: ReviewServices = request.app.state.review
    return services


def _auth(request: Request) -> AuthService:
    return services_of(request).auth


def _queue(request: Request) -> QueueService:
    return services_of(request).queue


def _tasks(request: Request) -> TaskService:
    return services_of(request).tasks


def _qa(request: Request) -> QaService:
    return services_of(request).qa


def _context(request: Request) -> ContextService:
    return services_of(request).context


Auth = Annotated[AuthService, Depends(_auth)]
Queue = Annotated[QueueService, Depends(_queue)]
Tasks = Annotated[TaskService, Depends(_tasks)]
Qa = Annotated[QaService, Depends(_qa)]
Context = Annotated[ContextService, Depends(_context)]


_bearer_scheme = HTTPBearer(auto_error=False, description="a token from POST /api/v1/auth/token")


async def bearer(
    request: Request,
    svc: Auth,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Reviewer:
    token = credentials.credentials.strip() if credentials else None
    return await svc.from_token(token, path=request.url.path)


Caller = Annotated[Reviewer, Depends(bearer)]

# A string that reaches the database or a log: no control characters (422 otherwise), and the
# OpenAPI document says so (the pattern is documentation; the validator enforces it).
Ident = Annotated[str, AfterValidator(identifier), Field(json_schema_extra={"pattern": ID_PATTERN})]
Text = Annotated[str, AfterValidator(free_text), Field(json_schema_extra={"pattern": TEXT_PATTERN})]
Secret = Annotated[str, AfterValidator(secret_text)]
# Path and query strings: the edge (`shield.EdgeCheck`) refuses control characters in them.
TaskId = Annotated[str, Path(json_schema_extra={"pattern": ID_PATTERN})]
Filter = Annotated[str | None, Query(json_schema_extra={"pattern": ID_PATTERN})]


class ErrorOut(BaseModel):
    """Every error the API sends; `field` names the input at fault, never its value."""

    detail: str
    field: str | None = None


_WHY = {
    400: "the body is not UTF-8",
    401: "no, invalid or expired credentials",
    403: "the caller's role or tenants do not allow it",
    404: "no such task (also another tenant's task)",
    409: "the task's state does not allow it",
    413: "request body too large",
    422: "invalid input; the submitted value is never echoed",
    429: "too many logins (per id, per address or at once) or requests without credentials"
    " (Retry-After)",
    503: "busy (Retry-After), or the audit log is unavailable and nothing was done",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": _WHY[code]} for code in codes}


class TokenRequest(BaseModel):
    reviewer: Ident = Field(min_length=1, max_length=128)
    password: Secret = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    token: str
    expires_at: datetime


class TaskOut(BaseModel):
    task_id: str
    post_id: str
    tenant: str
    lang: str | None
    policy: str
    model_verdict: Verdict
    categories: list[str]
    confidence: float | None
    reason: str
    domain_tags: list[str]
    created_at: datetime
    deadline: datetime
    countdown: str
    state: str
    sla: str
    assignee: str | None
    lock_expires_at: datetime | None
    human_verdict: Verdict | None
    late: bool
    model_refusal: bool | None = Field(
        None, description="response moderation: did the model say the assistant refused?"
    )
    input_truncated: bool = Field(
        False,
        description="the model judged a shortened text (the post was longer than its input"
        " window; head and tail kept): read the whole post before confirming",
    )
    action: str = Field(
        "review",
        description="the provisional action that sent the post to review: `review`, or"
        " `hold` (kept unpublished until a person decides; past its deadline it stays held,"
        " never downgraded to safe)",
    )

    @classmethod
    def of(cls, task: Task, now: datetime) -> TaskOut:
        return cls(
            task_id=task.task_id,
            post_id=task.post_id,
            tenant=task.tenant,
            lang=task.lang,
            policy=task.policy,
            model_verdict=task.model_verdict,
            categories=list(task.categories),
            confidence=task.confidence,
            reason=task.reason,
            domain_tags=list(task.domain_tags),
            created_at=task.created_at,
            deadline=task.deadline,
            countdown=countdown(task.deadline, now),
            state=task.state.value,
            sla=task.sla.value,
            assignee=task.assignee,
            lock_expires_at=task.lock_expires_at,
            human_verdict=task.human_verdict,
            late=task.late,
            model_refusal=task.model_refusal,
            input_truncated=task.input_truncated,
            action=task.action.value,
        )


class DecidedItemOut(BaseModel):
    """An earlier decided task of the same tenant."""

    task_id: str
    human_verdict: Verdict
    model_verdict: Verdict
    outcome: str = Field(description="confirm or correct (the model)")
    categories: list[str]
    tags: list[str]
    reason: str | None
    decided_at: datetime
    preview: str | None = Field(None, description="head of its text; only for reviewer roles")

    @classmethod
    def of(cls, item: DecidedItem) -> DecidedItemOut:
        return cls(
            task_id=item.task_id,
            human_verdict=item.human_verdict,
            model_verdict=item.model_verdict,
            outcome=item.outcome.value,
            categories=list(item.categories),
            tags=list(item.tags),
            reason=item.reason,
            decided_at=item.decided_at,
            preview=item.preview,
        )


class NeighbourOut(DecidedItemOut):
    match: str = Field(description="exact, near (duplicate) or semantic")
    similarity: float = Field(description="cosine of sentence embeddings; 1 for duplicates")


class AuthorOut(BaseModel):
    decided: int = Field(description="the author's decided posts in this tenant")
    by_verdict: dict[str, int]
    corrected: int = Field(description="how many of them corrected the model")
    recent: list[DecidedItemOut]


class ContextOut(BaseModel):
    similar: list[NeighbourOut]
    conflict: list[Verdict] = Field(
        description="differing human verdicts on near-identical content (empty: they agree)"
    )
    author: AuthorOut | None = Field(description="None: the post's author is not known")
    indexed: bool = Field(description="false: the text has no vector yet (no semantic search)")

    @classmethod
    def of(cls, ctx: ReviewContext) -> ContextOut:
        author = ctx.author
        return cls(
            similar=[
                NeighbourOut(
                    **DecidedItemOut.of(n.item).model_dump(),
                    match=n.kind.value,
                    similarity=round(n.similarity, 4),
                )
                for n in ctx.similar
            ],
            conflict=list(ctx.conflict),
            author=None
            if author is None
            else AuthorOut(
                decided=author.decided,
                by_verdict=author.by_verdict,
                corrected=author.corrected,
                recent=[DecidedItemOut.of(i) for i in author.items],
            ),
            indexed=ctx.indexed,
        )


class TaskDetail(TaskOut):
    text: str | None = Field(None, description="the post's text; only for reviewer roles")
    prompt: str | None = None
    kind: str | None = None
    context: ContextOut | None = Field(
        None,
        description="similar earlier decisions of this tenant and the author's decided posts;"
        " None on a task shown blind (an open QA item)",
    )


class StatsOut(BaseModel):
    queue_depth: int
    expired: int
    avg_response_s: float | None


class QueueOut(BaseModel):
    tasks: list[TaskOut]
    stats: StatsOut


class DecisionIn(BaseModel):
    outcome: ReviewOutcome = Field(description="confirm the model's label, or correct it")
    verdict: Verdict | None = Field(None, description="the human label (required to correct)")
    reason: Text | None = Field(
        None,
        description=f"why: required for every decision, or only when correcting where the "
        f"pack's reason_required says when_correcting; at most {REVIEW_REASON_MAX} characters",
    )
    tags: list[Ident] = Field(
        default_factory=list,
        description="at least one quick tag",
        json_schema_extra={"minItems": 1},  # checked by the service (its message)
    )
    categories: list[Ident] | None = None
    refusal: bool | None = Field(
        None, description="response items only: did the assistant refuse? (omit: the model's)"
    )

    def submission(self) -> SubmissionForm:
        return SubmissionForm(
            outcome=self.outcome,
            verdict=self.verdict,
            reason=self.reason,
            tags=tuple(self.tags),
            categories=None if self.categories is None else tuple(self.categories),
            refusal=self.refusal,
        )


class QaDecisionIn(BaseModel):
    """A blind QA label: the senior has not seen the first review's label."""

    verdict: Verdict
    reason: Text | None = Field(
        None, description=f"why this label: always required, at most {REVIEW_REASON_MAX} characters"
    )
    tags: list[Ident] = Field(
        default_factory=list,
        description="at least one quick tag",
        json_schema_extra={"minItems": 1},  # checked by the service (its message)
    )
    categories: list[Ident] | None = None
    refusal: bool | None = Field(None, description="response items only: did the assistant refuse?")

    def submission(self) -> SubmissionForm:
        """Blind: no outcome (the service works it out against the first label)."""
        return SubmissionForm(
            verdict=self.verdict,
            reason=self.reason,
            tags=tuple(self.tags),
            categories=None if self.categories is None else tuple(self.categories),
            refusal=self.refusal,
        )


class QaItemOut(TaskOut):
    period: str = Field(description="the QA batch: the month (week) whose reviews it samples")


class QaItemDetail(QaItemOut):
    text: str | None = None
    prompt: str | None = None
    kind: str | None = None


class QaDecidedOut(BaseModel):
    review_id: str
    verdict: Verdict = Field(description="the senior's label")
    first_verdict: Verdict | None = Field(description="the first review's label, shown now")
    agreed: bool


class ReviewerAgreementOut(BaseModel):
    reviewer: str = Field(description="pseudonymous id of the first reviewer checked")
    checked: int
    agreed: int
    rate: float | None
    below_bar: bool


class QaBatchOut(BaseModel):
    period: str
    since: datetime
    until: datetime
    size: int
    items: int
    undecided: int
    min_agreement: float
    sampled_at: datetime
    closed_at: datetime | None
    alert_id: str | None
    reviewers: list[ReviewerAgreementOut]


class DecidedOut(BaseModel):
    task: TaskOut
    review_id: str
    decision_id: str | None
    action: str | None
    late: bool


class AgreementOut(BaseModel):
    compared: int
    agreed: int
    rate: float | None


def task_json(task: Task, now: datetime) -> dict[str, Any]:
    """`TaskOut` as a plain dict for orjson: the queue page serialises 50 of these per view,
    and pydantic's response validation + serialisation cost more than the query (bench)."""
    return {
        "task_id": task.task_id,
        "post_id": task.post_id,
        "tenant": task.tenant,
        "lang": task.lang,
        "policy": task.policy,
        "model_verdict": task.model_verdict.value,
        "categories": list(task.categories),
        "confidence": task.confidence,
        "reason": task.reason,
        "domain_tags": list(task.domain_tags),
        "created_at": task.created_at,
        "deadline": task.deadline,
        "countdown": countdown(task.deadline, now),
        "state": task.state.value,
        "sla": task.sla.value,
        "assignee": task.assignee,
        "lock_expires_at": task.lock_expires_at,
        "human_verdict": task.human_verdict.value if task.human_verdict else None,
        "late": task.late,
        "model_refusal": task.model_refusal,
        "input_truncated": task.input_truncated,
        "action": task.action.value,
    }


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _stats(stats: QueueStats) -> StatsOut:
    return StatsOut(
        queue_depth=stats.depth, expired=stats.expired, avg_response_s=stats.avg_response_s
    )


def _decided(result: Decided, now: datetime) -> DecidedOut:
    return DecidedOut(
        task=TaskOut.of(result.task, now),
        review_id=result.review_id,
        decision_id=result.decision_id,
        action=result.action,
        late=result.late,
    )


# Any route may answer these: bad credentials, and what the edge refuses before a handler runs.
router = APIRouter(prefix="/api/v1", tags=["review"], responses=errors(401, 413, 422, 429, 503))


def edge_of(request: Request) -> Edge:
    edge: Edge = request.app.state.edge
    return edge


@router.post(
    "/auth/token",
    response_model=TokenOut,
    responses=errors(400),
    summary="Exchange credentials for a token",
)
async def token(request: Request, body: TokenRequest, svc: Auth) -> TokenOut:
    await edge_of(request).admit_login(
        body.reviewer, request.client.host if request.client else None
    )
    reviewer = await svc.login(body.reviewer, body.password)
    value, expires = await svc.issue_token(reviewer)
    return TokenOut(token=value, expires_at=expires)


@router.get(
    "/queue", response_model=QueueOut, responses=errors(403), summary="Open tasks by SLA deadline"
)
async def queue(
    svc: Queue,
    caller: Caller,
    tenant: Filter = None,
    lang: Filter = None,
    category: Filter = None,
    tag: Annotated[
        str | None,
        Query(
            description="a policy domain tag, e.g. 领域:公共卫生",
            json_schema_extra={"pattern": ID_PATTERN},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    tasks, stats = await svc.queue(caller, QueueFilter(tenant, lang, category, tag), limit)
    now = svc.now()
    # Documented as QueueOut (response_model), sent without re-validating it.
    return _json(
        {
            "tasks": [task_json(t, now) for t in tasks],
            "stats": _stats(stats).model_dump(),
        }
    )


@router.get(
    "/stats",
    response_model=StatsOut,
    responses=errors(403),
    summary="Queue depth and average response time",
)
async def stats(svc: Queue, caller: Caller) -> StatsOut:
    return _stats(await svc.stats(caller))


@router.get("/tags", response_model=list[str], summary="The quick tags a decision picks from")
async def tags(svc: Tasks, caller: Caller) -> list[str]:
    return list(svc.tags)


@router.post(
    "/tasks/claim",
    response_model=TaskOut | None,
    responses=errors(403, 409),
    summary="Claim the next task",
)
async def claim(svc: Tasks, caller: Caller) -> Response:
    task = await svc.claim(caller)
    return _json(task_json(task, svc.now()) if task else None)


@router.get(
    "/tasks/{task_id}",
    response_model=TaskDetail,
    responses=errors(403, 404),
    summary="One task, with its text",
)
async def read_task(task_id: TaskId, svc: Queue, context: Context, caller: Caller) -> TaskDetail:
    view: TaskView = await svc.view(caller, task_id)
    base = TaskOut.of(view.task, svc.now()).model_dump()
    if view.text is not None:
        base.update(text=view.text.text, prompt=view.text.prompt, kind=view.text.kind)
    found = await context.for_view(caller, view)
    return TaskDetail(**base, context=ContextOut.of(found) if found is not None else None)


@router.post(
    "/tasks/{task_id}/release",
    response_model=TaskOut,
    responses=errors(403, 404, 409),
    summary="Give a task back",
)
async def release(task_id: TaskId, svc: Tasks, caller: Caller) -> TaskOut:
    return TaskOut.of(await svc.release(caller, task_id), svc.now())


@router.post(
    "/tasks/{task_id}/decision",
    response_model=DecidedOut,
    responses=errors(400, 403, 404, 409),
    summary="Decide a task: confirm or correct, reason, quick tags",
)
async def decide(task_id: TaskId, body: DecisionIn, svc: Tasks, caller: Caller) -> DecidedOut:
    return _decided(await svc.decide(caller, task_id, body.submission()), svc.now())


@router.post(
    "/tasks/{task_id}/qa",
    response_model=DecidedOut,
    responses=errors(400, 403, 404, 409),
    summary="Senior re-review (QA)",
)
async def qa(task_id: TaskId, body: DecisionIn, svc: Qa, caller: Caller) -> DecidedOut:
    return _decided(await svc.re_review(caller, task_id, body.submission()), svc.now())


@router.get(
    "/qa/agreement",
    response_model=AgreementOut,
    responses=errors(403),
    summary="QA agreement figures",
)
async def qa_agreement(svc: Qa, caller: Caller) -> AgreementOut:
    result = await svc.agreement(caller)
    return AgreementOut(compared=result.compared, agreed=result.agreed, rate=result.rate)


@router.get(
    "/qa/queue",
    response_model=list[QaItemOut],
    responses=errors(403),
    summary="The senior's QA queue (blind)",
)
async def qa_queue(
    svc: Qa, caller: Caller, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[QaItemOut]:
    now = svc.now()
    return [
        QaItemOut(**TaskOut.of(e.task, now).model_dump(), period=e.period)
        for e in await svc.queue(caller, limit)
    ]


@router.get(
    "/qa/items/{task_id}",
    response_model=QaItemDetail,
    responses=errors(403, 404),
    summary="One QA item (blind)",
)
async def qa_item(task_id: TaskId, svc: Qa, caller: Caller) -> QaItemDetail:
    entry, text = await svc.view(caller, task_id)
    out = QaItemDetail(**TaskOut.of(entry.task, svc.now()).model_dump(), period=entry.period)
    if text is not None:
        out.text, out.prompt, out.kind = text.text, text.prompt, text.kind
    return out


@router.post(
    "/qa/items/{task_id}",
    response_model=QaDecidedOut,
    responses=errors(400, 403, 404, 409),
    summary="Label a QA item (blind)",
)
async def qa_decide(task_id: TaskId, body: QaDecisionIn, svc: Qa, caller: Caller) -> QaDecidedOut:
    result = await svc.re_review(caller, task_id, body.submission(), blind=True)
    first = result.task.human_verdict
    return QaDecidedOut(
        review_id=result.review_id,
        verdict=body.verdict,
        first_verdict=first,
        agreed=first is body.verdict,
    )


@router.get(
    "/qa/batches/{period}",
    response_model=QaBatchOut | None,
    responses=errors(403, 404),
    summary="A QA batch's progress and per-reviewer agreement (`latest` for the newest)",
)
async def qa_batch(period: TaskId, svc: Qa, caller: Caller) -> Response:
    report = await svc.report(caller, None if period == "latest" else period[:32])
    if report is None:
        return JSONResponse({"detail": "no such QA batch"}, status_code=404)
    b = report.batch
    out = QaBatchOut(
        period=b.period,
        since=b.since,
        until=b.until,
        size=b.size,
        items=report.items,
        undecided=report.undecided,
        min_agreement=b.min_agreement,
        sampled_at=b.sampled_at,
        closed_at=b.closed_at,
        alert_id=b.alert_id,
        reviewers=[
            ReviewerAgreementOut(
                reviewer=r,
                checked=c,
                agreed=a,
                rate=a / c if c else None,
                below_bar=r in report.below_bar,
            )
            for r, (a, c) in report.scores.items()
        ],
    )
    return _json(out.model_dump(mode="json"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ReviewError)
    async def _review_error(request: Request, exc: ReviewError) -> Response:
        if request.url.path.startswith("/console"):
            # A person in the browser: a page with the reason and a way back.
            body = (
                '<!doctype html><meta charset="utf-8"><title>guardstream review</title>'
                f'<p role="alert" id="error">{html.escape(exc.message)}</p>'
                '<p><a href="/console">back to the queue</a> · <a href="/console/login">log in</a>'
            )
            return HTMLResponse(body, status_code=exc.status)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(InvalidSubmission)
    async def _invalid(request: Request, exc: InvalidSubmission) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=422)

    token_path = app.url_path_for("token")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; a path template served
            # by two routes (GET and POST of a QA item) allows both. PARTIAL: the path matches,
            # the method does not.
            matching = [
                r
                for r in app.routes
                if isinstance(r, Route) and r.matches(request.scope)[0] is not Match.NONE
            ]
            allowed: set[str] = set()
            for route in matching:
                if route.path == matching[0].path:
                    allowed |= route.methods or set()
            exc = StarletteHTTPException(405, exc.detail, {"Allow": ", ".join(sorted(allowed))})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The documented body, without pydantic's `input`: a login's password is never echoed.
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ())]
        field = ".".join(loc[1:]) or (loc[0] if loc else None)
        if request.url.path == token_path:
            # A refused login is a failed attempt: audited, at the bounded rate.
            await edge_of(request).denied.record("login", {"why": "invalid input", "field": field})
        return JSONResponse({"detail": str(first.get("msg", "invalid")), "field": field}, 422)

    @app.exception_handler(Throttled)
    async def _throttled(request: Request, exc: Throttled) -> JSONResponse:
        return JSONResponse(
            {"detail": f"too many login attempts for this {exc.scope}: retry later"},
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(HashPoolBusy)
    async def _hashing_busy(request: Request, exc: HashPoolBusy) -> JSONResponse:
        review_metrics.shed.add(1, {"reason": "hashing_busy"})
        return JSONResponse(
            {"detail": "too many logins at once: retry shortly"},
            status_code=429,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(AuditFailed)
    async def _audit(request: Request, exc: AuditFailed) -> JSONResponse:
        return JSONResponse(
            {"detail": "the audit log is unavailable; nothing was done"}, status_code=503
        )
