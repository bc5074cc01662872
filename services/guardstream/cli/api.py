"""`guardstream api`: the moderation API process, and its tenants' keys (`add-key`,
`revoke-key`, `list-keys`).

`guardstream api` alone starts the server (as `make up`, compose and the tests run it). A
new key is printed once, as the last line of `add-key`'s output; the store keeps its SHA-256.
Invalid arguments (a tenant or name the store refuses, control characters, a rate out of
range) exit 2 with the reason; an unknown key id exits 1; an unreachable database exits 1."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape

from guardstream.cli.common import err, load_settings, out, run_process

if TYPE_CHECKING:
    from guardstream.api.keys import ApiKey, KeyStore

T = TypeVar("T")

app = typer.Typer(
    invoke_without_command=True,
    help="The moderation API (HTTP, OpenAI-compatible); its tenants' API keys.",
)


@app.callback()
def api(ctx: typer.Context) -> None:
    """Run the moderation API (HTTP → the same decisions as the stream; OpenAI-compatible)."""
    if ctx.invoked_subcommand is not None:
        return
    # lazy: FastAPI, uvicorn and asyncpg only in the API's process
    from guardstream.api.main import START_ERRORS, event_loop
    from guardstream.api.main import run as run_api

    run_process("api", run_api, start_errors=START_ERRORS, event_loop=event_loop)


def _invalid(problem: str) -> typer.Exit:
    err.print(f"[red]invalid argument:[/red] {escape(problem)}", soft_wrap=True)
    return typer.Exit(2)


def _with_keys(work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `work` on the key store of this deployment (its tables migrated first)."""
    # lazy: asyncpg only for the key commands
    from guardstream.api import db
    from guardstream.api.db import DB_ERRORS
    from guardstream.api.keys import KeyStore

    settings = load_settings()

    async def main() -> T:
        pool = await db.connect(settings)
        try:
            return await work(KeyStore(pool))
        finally:
            await pool.close()

    try:
        return asyncio.run(main())
    except DB_ERRORS as exc:
        err.print(
            f"[red]cannot use the key store[/red] (PostgreSQL, DATABASE_URL): {type(exc).__name__}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _describe(key: ApiKey) -> str:
    rate = "default rate" if key.rate_per_s is None else f"{key.rate_per_s:g}/s"
    burst = "default burst" if key.burst is None else f"burst {key.burst}"
    state = "active" if key.revoked_at is None else f"revoked {key.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    name = f" {key.name!r}" if key.name else ""
    return (
        f"{key.key_id}  tenant {key.tenant}{name}  {rate}, {burst}"
        f"  created {key.created_at:%Y-%m-%dT%H:%M:%SZ}  {state}"
    )


@app.command("add-key")
def add_key(
    tenant: Annotated[str, typer.Option(help="The tenant the key answers for (only that one).")],
    name: Annotated[str, typer.Option(help="What the key is for (shown by list-keys).")] = "",
    rate: Annotated[
        float | None,
        typer.Option(help="Requests per second (default: GUARDSTREAM_API_KEY_RATE_PER_S)."),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option(help="Requests at once above the rate (default: GUARDSTREAM_API_KEY_BURST)."),
    ] = None,
) -> None:
    """Add an API key for a tenant and print it once, as the last line of stdout.

    Callers send it as `Authorization: Bearer <key>` (the OpenAI SDK's `api_key`); only its
    SHA-256 is stored, so it cannot be shown again: revoke it and add another if it is lost."""
    # lazy: asyncpg and the API package only for the key commands
    from guardstream.api.keys import (
        KeyRequestInvalid,
        checked_name,
        checked_rate,
        checked_tenant,
    )

    try:
        checked_tenant(tenant)
        checked_name(name)
        checked_rate(rate, burst)
    except KeyRequestInvalid as exc:
        raise _invalid(str(exc)) from None
    added, key = _with_keys(lambda keys: keys.add(tenant, name, rate_per_s=rate, burst=burst))
    out.print(f"added {escape(_describe(added))}", soft_wrap=True, highlight=False)
    out.print(
        "the key below is shown once (only its hash is stored); send it as"
        " `Authorization: Bearer <key>`",
        soft_wrap=True,
        highlight=False,
    )
    sys.stdout.flush()
    sys.stdout.write(key + "\n")  # plain, the last line: scripts read it there
    sys.stdout.flush()


@app.command("revoke-key")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (16 hex digits after `gsk_`).")],
) -> None:
    """Revoke a key: refused (401) on every API replica within GUARDSTREAM_API_KEY_CACHE_S."""
    # lazy: asyncpg and the API package only for the key commands
    from guardstream.api.keys import KeyRequestInvalid, checked_key_id, key_id_of

    key_id = key_id_of(key_id) or key_id  # the whole key names its id too
    try:
        checked_key_id(key_id)
    except KeyRequestInvalid as exc:
        raise _invalid(str(exc)) from None
    revoked = _with_keys(lambda keys: keys.revoke(key_id))
    if revoked is None:
        err.print(f"no key with id {key_id}")
        raise typer.Exit(1)
    out.print(f"revoked {escape(_describe(revoked))}", soft_wrap=True, highlight=False)


@app.command("list-keys")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List keys (ids, tenants, names, rates, states; never a secret), oldest first."""
    # lazy: asyncpg and the API package only for the key commands
    from guardstream.api.keys import KeyRequestInvalid, checked_tenant

    if tenant is not None:
        try:
            checked_tenant(tenant)
        except KeyRequestInvalid as exc:
            raise _invalid(str(exc)) from None
    found = _with_keys(lambda keys: keys.list(tenant))
    for key in found:
        out.print(escape(_describe(key)), soft_wrap=True, highlight=False)
    if not found:
        err.print("no keys" + (f" of tenant {tenant}" if tenant else ""))
