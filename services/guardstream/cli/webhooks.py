"""`guardstream webhooks`: each tenant's decision callback (docs/components/api.md, "Decision
callbacks"): register it (a new signing secret, printed once as the last line), remove it,
list them, and see its deliveries. Arguments are judged before the database is touched:
an invalid tenant, URL or status exits 2 with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from rich.markup import escape

from guardstream.api.webhooks import new_secret, url_problem
from guardstream.cli.common import err, load_settings, out
from guardstream.cli.output import json_lines, table
from guardstream.contracts.events import Tenant
from guardstream.runtime.settings import mask_url

if TYPE_CHECKING:
    from guardstream.api.delivery import WebhookStore

T = TypeVar("T")
STATUSES = ("pending", "delivered", "dead")
_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)

app = typer.Typer(no_args_is_help=True, help="Decision callbacks: each tenant's webhook.")

TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant (as in posts).")]


def _check_tenant(tenant: str) -> None:
    try:
        _TENANT.validate_python(tenant)
    except ValidationError:
        err.print(
            "a tenant is 1-63 characters: lowercase letters, digits, '_' and '-', starting"
            " with a letter or digit"
        )
        raise typer.Exit(2) from None


def _with_store(work: Callable[[WebhookStore], Awaitable[T]]) -> T:
    # lazy: asyncpg only for the commands that touch the database
    from guardstream.api import db as api_db
    from guardstream.api.delivery import WebhookStore

    settings = load_settings()

    async def main() -> T:
        pool = await api_db.connect(settings)
        try:
            return await work(WebhookStore(pool))
        finally:
            await pool.close()

    return asyncio.run(main())


@app.command("set")
def set_webhook(
    tenant: TenantOption,
    url: Annotated[str, typer.Option("--url", help="Where decisions are POSTed (http/https).")],
) -> None:
    """Register the tenant's webhook, or replace it: a new signing secret each time, printed
    once as the last line (store it with the receiver; the old one stops working). Private
    and loopback addresses are refused unless GUARDSTREAM_WEBHOOK_ALLOW_PRIVATE is set."""
    _check_tenant(tenant)
    settings = load_settings()
    problem = url_problem(url, allow_private=settings.webhooks.allow_private)
    if problem is not None:
        err.print(f"refused: {escape(problem)}")
        raise typer.Exit(2)
    secret = new_secret()
    _with_store(lambda store: store.register(tenant, url, secret))
    out.print(
        f"webhook of {escape(tenant)} set to {escape(mask_url(url))}; its signing secret"
        " (shown once) is the last line",
        soft_wrap=True,
    )
    out.print(secret, markup=False, highlight=False, soft_wrap=True)


@app.command("remove")
def remove_webhook(tenant: TenantOption) -> None:
    """Stop calling the tenant back; deliveries still pending are dead-lettered."""
    _check_tenant(tenant)
    if not _with_store(lambda store: store.remove(tenant)):
        err.print(f"no webhook registered for {escape(tenant)}")
        raise typer.Exit(1)
    out.print(f"webhook of {escape(tenant)} removed")


@app.command("list")
def list_webhooks(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Every tenant's webhook (URL credentials and query values masked), removed ones too."""
    found = _with_store(lambda store: store.registered())
    rows = [
        {
            "tenant": hook.tenant,
            "url": mask_url(hook.url),
            "created_at": hook.created_at.isoformat(),
            "removed_at": hook.disabled_at.isoformat() if hook.disabled_at else None,
        }
        for hook in found
    ]
    if as_json:
        json_lines(rows)
        return
    shown = table("tenant", "url", "registered", "removed")
    for row in rows:
        shown.add_row(*(escape(str(row[k] or "")) for k in row))
    out.print(shown)


@app.command("deliveries")
def deliveries(
    tenant: TenantOption,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, delivered or dead.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """The tenant's latest deliveries, newest first: event, post, status, tries, last error."""
    _check_tenant(tenant)
    if status is not None and status not in STATUSES:
        err.print(f"--status must be one of {', '.join(STATUSES)}")
        raise typer.Exit(2)
    found = _with_store(lambda store: store.deliveries(tenant, status, limit))
    rows = [
        {
            "id": d.id,
            "event_id": d.event_id,
            "post_id": d.post_id,
            "status": d.status,
            "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at.isoformat() if d.status == "pending" else None,
            "last_error": d.last_error,
            "created_at": d.created_at.isoformat(),
        }
        for d in found
    ]
    if as_json:
        json_lines(rows)
        return
    shown = table("id", "event", "post", "status", "tries", "next try", "last error", "created")
    for row in rows:
        shown.add_row(*(escape(str(v if v is not None else "")) for v in row.values()))
    out.print(shown)
