"""Who may call the moderation API, for which tenant, how often: the `/v1` routes' gate.

Every request whose path is `/v1` or under it passes `Gate` (an ASGI layer) before routing
or reading its body; other paths (the page, `/openapi.json`, the docs) pass untouched, and
health probes are served on their own port. With `GUARDSTREAM_API_AUTH=keys`:

| the request                                        | answer                                 |
|----------------------------------------------------|----------------------------------------|
| no `Authorization: Bearer <key>`                   | 401 `missing_key`, `WWW-Authenticate`  |
| malformed, unknown key, or a wrong secret          | 401 `invalid_key`, `WWW-Authenticate`  |
| the right secret of a revoked key                  | 401 `revoked_key`, `WWW-Authenticate`  |
| the key store unreachable (key not cached)         | 503, Retry-After                       |
| over the key's rate (`api.ratelimit`)              | 429, Retry-After                       |
| a tenant (body, `x-guardstream-tenant`, query) that is not the key's | 403 `forbidden_tenant` |
| no tenant given                                    | the key's tenant                       |

With `off` (local development) every request passes and the tenant is the caller's word, as
before keys. Keys never reach a log line or a metric; the key id does where one is needed.
Each outcome is counted (`counts`, metric `guardstream.api.gate`).
"""

from __future__ import annotations

import ipaddress
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from guardstream.api.keys import ApiKey, Check, KeyRing, KeyStore, KeyStoreUnavailable, bearer_token
from guardstream.api.protocol import DEFAULT_TENANT, parse_json
from guardstream.api.ratelimit import RateLimiter
from guardstream.contracts.errors import PermanentError
from guardstream.contracts.events import ContractError
from guardstream.runtime.settings import Settings

log = logging.getLogger(__name__)

CALLER = "guardstream.caller"  # the ASGI scope's entry the gate leaves for the handlers
TENANT_HEADER = "x-guardstream-tenant"
CHALLENGE = 'Bearer realm="guardstream"'

_DETAIL = {
    Check.MISSING: "send `Authorization: Bearer <key>` (guardstream api add-key)",
    Check.INVALID: "the key is not a key of this deployment",
    Check.REVOKED: "the key was revoked",
}


_DOCUMENTED = {
    "401": "no key, or a malformed, unknown or revoked one (`reason`, `WWW-Authenticate`)",
    "403": "a tenant other than the key's (`forbidden_tenant`)",
    "429": "over the key's rate limit (`rate_limited`, Retry-After)",
}


class TenantMismatch(PermanentError):
    """A request naming a tenant other than its key's (403)."""


class OpenApiRefused(PermanentError):
    """`GUARDSTREAM_API_AUTH=off` with the API listening beyond the loopback: not started."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who the gate let in: a key, or anyone (`GUARDSTREAM_API_AUTH=off`, key None)."""

    key: ApiKey | None

    @property
    def tenant(self) -> str | None:
        """The only tenant this caller may name; None: any (auth off)."""
        return None if self.key is None else self.key.tenant

    def tenant_for(self, claimed: str | None) -> str:
        """The tenant of a request that names `claimed` (None: names none)."""
        if self.key is None:
            return DEFAULT_TENANT if claimed is None else claimed
        if claimed is not None and claimed != self.key.tenant:
            raise TenantMismatch
        return self.key.tenant

    def bind(self, item: object) -> object:
        """A request item (a parsed post) for the caller's tenant: as given when it names the
        key's tenant or is not an object at all (the contract refuses it), with the key's
        tenant when it names none (or null); `TenantMismatch` when it names another."""
        if self.key is None or not isinstance(item, dict):
            return item
        if item.get("tenant") is None:  # absent or null: the key's
            return {**item, "tenant": self.key.tenant}
        if item["tenant"] != self.key.tenant:
            raise TenantMismatch
        return item

    def bind_raw(self, raw: bytes) -> object:
        """`bind` for a body not parsed yet: the bytes as they came unless the tenant has to
        be filled in (what does not parse goes on to be refused by the contract)."""
        if self.key is None:
            return raw
        try:
            value = parse_json(raw)
        except ContractError:
            return raw
        bound = self.bind(value)
        return raw if bound is value else bound


def caller(request: Request) -> Caller:
    """The caller the gate let in (a handler of a `/v1` route only)."""
    found = request.scope.get(CALLER)
    if not isinstance(found, Caller):
        raise TypeError("a /v1 route without the gate in front of it")
    return found


def guarded(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def _json(status: int, value: object, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(value), status, headers, media_type="application/json")


def refusal(status: int, reason: str, detail: str, **headers: str) -> Response:
    """A refusal both kinds of client read: `reason`/`detail` as the rest of this API, and
    `error` as OpenAI's SDK expects."""
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    return _json(
        status,
        {
            "reason": reason,
            "detail": detail,
            "error": {
                "message": detail,
                "type": kind.get(status, "server_error"),
                "code": reason,
            },
        },
        headers,
    )


class Gate:
    """Authentication and the rate limit in front of the `/v1` routes; `keys` None: auth off."""

    def __init__(
        self,
        keys: KeyRing | None,
        limiter: RateLimiter | None,
        *,
        retry_after_s: int,
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._retry_after_s = retry_after_s
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "authenticated",
                "open",
                "missing_key",
                "invalid_key",
                "revoked_key",
                "key_store_unavailable",
                "rate_limited",
                "rate_unchecked",
                "forbidden_tenant",
            ),
            0,
        )

    def install(self, app: FastAPI) -> None:
        """Put the gate in front of `app`, answer `TenantMismatch` 403, and say both in the
        OpenAPI document (the bearer scheme, the refusals of every `/v1` operation)."""
        app.add_middleware(_GateLayer, gate=self)
        self._document(app)

        @app.exception_handler(TenantMismatch)
        async def forbidden(_request: Request, _exc: TenantMismatch) -> Response:
            self.counts["forbidden_tenant"] += 1
            return refusal(
                403,
                "forbidden_tenant",
                "this key answers for its own tenant only: omit the tenant or give the key's",
            )

    def _document(self, app: FastAPI) -> None:
        generate = app.openapi
        keys = self._keys is not None

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is not None:
                return app.openapi_schema
            schema = generate()
            if keys:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["apiKey"] = {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant's key (`guardstream api add-key`): gsk_...",
                }
            for path, operations in schema.get("paths", {}).items():
                if not guarded(path):
                    continue
                for operation in operations.values():
                    if keys:
                        operation["security"] = [{"apiKey": []}]
                    responses = operation.setdefault("responses", {})
                    for status, description in _DOCUMENTED.items() if keys else ():
                        responses.setdefault(status, {"description": description})
                    responses.setdefault("503", {"description": "unavailable, Retry-After"})
            app.openapi_schema = schema
            return schema

        app.openapi = openapi  # type: ignore[method-assign]

    async def admit(self, authorization: str | None) -> Caller | Response:
        """The caller of a request with this `Authorization` header, or the answer refusing it."""
        if self._keys is None:
            self.counts["open"] += 1
            return Caller(None)
        try:
            checked = await self._keys.check(bearer_token(authorization))
        except KeyStoreUnavailable as exc:
            self.counts["key_store_unavailable"] += 1
            log.warning("key store unavailable", extra={"error": str(exc)})
            return _json(
                503,
                {"error": {"message": "the key store is unavailable", "type": "server_error"}},
                {"Retry-After": str(self._retry_after_s)},
            )
        if isinstance(checked, Check):
            self.counts[checked.value] += 1
            return refusal(401, checked.value, _DETAIL[checked], **{"WWW-Authenticate": CHALLENGE})
        if self._limiter is not None:
            admission = await self._limiter.admit(checked)
            if not admission.checked:
                self.counts["rate_unchecked"] += 1
            if not admission.allowed:
                self.counts["rate_limited"] += 1
                return refusal(
                    429,
                    "rate_limited",
                    "over this key's rate limit: retry after the time Retry-After gives",
                    **{"Retry-After": str(admission.retry_after_s)},
                )
        self.counts["authenticated"] += 1
        return Caller(checked)


class _GateLayer:
    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        admitted = await self.gate.admit(_authorization(scope))
        if isinstance(admitted, Response):
            await admitted(scope, receive, send)
            return
        scope[CALLER] = admitted
        await self.app(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    """The first `Authorization` header (latin-1, as HTTP carries it)."""
    headers: Any = scope.get("headers", ())
    for name, value in headers:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def open_gate(settings: Settings, pool: asyncpg.Pool, stack: AsyncExitStack) -> Gate:
    """The gate `settings` ask for: its key store on the API's `pool` (PostgreSQL, migrated)
    and its rate limiter (Redis) closed with `stack`; `OpenApiRefused` for auth off beyond
    the loopback."""
    retry_after_s = settings.api.retry_after_s
    if settings.api.auth == "off":
        if not loopback(settings.api.host):
            raise OpenApiRefused(
                f"GUARDSTREAM_API_AUTH=off serves every tenant to anyone: only on a loopback"
                f" address, not {settings.api.host!r} (add a key: guardstream api add-key)"
            )
        log.warning("api keys are off: any caller may name any tenant (local development)")
        return Gate(None, None, retry_after_s=retry_after_s)
    limiter = RateLimiter(settings)
    stack.push_async_callback(limiter.close)
    ring = KeyRing(KeyStore(pool), ttl_s=settings.api.key_cache_s)
    return Gate(ring, limiter, retry_after_s=retry_after_s)
