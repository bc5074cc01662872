"""`guardstream review`: the review process (API, console, consumers) and the reviewer
credentials' admin commands."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape

from guardstream.cli.common import err, load_settings, out, run_process

if TYPE_CHECKING:
    from guardstream.review.wiring import ReviewServices

T = TypeVar("T")

app = typer.Typer(
    invoke_without_command=True,
    help="The review console: API + console + consumers; reviewer credentials.",
)


@app.callback()
def review(ctx: typer.Context) -> None:
    """Serve the review API and console and run its consumers (one process)."""
    if ctx.invoked_subcommand is not None:
        return
    # lazy: FastAPI, uvicorn and asyncpg only in the review console's process
    from guardstream.review.main import run as run_review

    run_process("review", run_review, start_errors=(OSError,))


@app.command("add-reviewer")
def add_reviewer(
    reviewer_id: Annotated[str, typer.Option("--id", help="Pseudonymous reviewer id.")],
    tenant: Annotated[
        list[str], typer.Option(help="A tenant the reviewer may see (repeat); '*' = all.")
    ],
    role: Annotated[str, typer.Option(help="reviewer, senior or admin.")] = "reviewer",
    on_call: Annotated[bool, typer.Option(help="Receives round-robin assignments.")] = False,
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from stdin instead of a prompt.")
    ] = False,
    token: Annotated[bool, typer.Option(help="Also print a new API bearer token.")] = False,
) -> None:
    """Create or update a reviewer; the password is stored as a scrypt hash."""
    # lazy: asyncpg and the review package only for the review commands
    from guardstream.review.auth import hash_password
    from guardstream.review.logic import Reviewer, Role
    from guardstream.review.wiring import review_services

    try:
        chosen = Role(role)
    except ValueError:
        err.print("role must be reviewer, senior or admin")
        raise typer.Exit(2) from None
    _check_reviewer_id(reviewer_id)
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else typer.prompt("password", hide_input=True, confirmation_prompt=True)
    )
    if len(password) < 8:
        err.print("the password needs at least 8 characters")
        raise typer.Exit(2)
    settings = load_settings()
    reviewer = Reviewer(reviewer_id, tuple(tenant), chosen, on_call)

    async def main() -> str | None:
        async with review_services(settings) as review:
            await review.auth.put_reviewer(reviewer, hash_password(password), actor="cli")
            if not token:
                return None
            value, _ = await review.auth.issue_token(reviewer)
            return value

    issued = asyncio.run(main())
    out.print(
        f"reviewer {escape(reviewer_id)} saved ({chosen.value};"
        f" tenants {escape(', '.join(tenant))})"
    )
    if issued:
        sys.stdout.write(issued + "\n")


def _check_reviewer_id(reviewer_id: str) -> None:
    """Exit 2 with a message unless the id is 1-128 printable characters (what the store and
    the login form accept)."""
    try:
        reviewer_id.encode()
    except UnicodeEncodeError:
        reviewer_id = "\0"  # a lone surrogate: refused like any unprintable character
    if not reviewer_id.strip() or len(reviewer_id) > 128 or not reviewer_id.isprintable():
        err.print("--id must be 1-128 printable characters")
        raise typer.Exit(2)


def _with_review(work: Callable[[ReviewServices], Awaitable[T]]) -> T:
    """Run `work` against the review services of this deployment (store migrated first)."""
    settings = load_settings()

    async def main() -> T:
        # lazy: asyncpg and the review package only for the review commands
        from guardstream.review.wiring import review_services

        async with review_services(settings) as review:
            return await work(review)

    return asyncio.run(main())


ReviewerId = Annotated[str, typer.Option("--id", help="The reviewer's id.")]


@app.command("revoke-token")
def revoke_token(
    reviewer_id: Annotated[
        str | None,
        typer.Option("--id", help="Revoke every token and console session of this reviewer."),
    ] = None,
    token_stdin: Annotated[
        bool, typer.Option(help="Read the token to revoke from stdin instead of a prompt.")
    ] = False,
) -> None:
    """Revoke one API token (given on stdin or at a hidden prompt), or with --id every token
    and console session of a reviewer. Takes effect from the next request, on every replica."""

    if reviewer_id is not None:
        _check_reviewer_id(reviewer_id)
        revoked = _with_review(lambda r: r.auth.revoke_all(reviewer_id, actor="cli"))
        if revoked is None:
            err.print(f"no reviewer with id {escape(repr(reviewer_id))}")
            raise typer.Exit(1)
        out.print(
            f"reviewer {escape(reviewer_id)}: {revoked[0]} token(s) and {revoked[1]}"
            " session(s) revoked"
        )
        return
    token = (
        sys.stdin.readline().strip()
        if token_stdin
        else typer.prompt("token", hide_input=True).strip()
    )
    if not token or not token.isascii() or not token.isprintable():
        err.print("not a token: give the gsr_... value the token was issued as")
        raise typer.Exit(2)
    owner = _with_review(lambda r: r.auth.revoke_token(token, actor="cli"))
    if owner is None:
        err.print("no such token (unknown, already revoked or purged after expiry)")
        raise typer.Exit(1)
    out.print(f"token of reviewer {escape(owner)} revoked")


@app.command("disable-reviewer")
def disable_reviewer(reviewer_id: ReviewerId) -> None:
    """Disable a reviewer at once: no login, every token and session revoked, the tasks they
    hold back in the queue. `enable-reviewer` undoes it (with new credentials)."""
    _check_reviewer_id(reviewer_id)
    done = _with_review(lambda r: r.auth.disable_reviewer(reviewer_id, actor="cli"))
    if done is None:
        err.print(f"no reviewer with id {escape(repr(reviewer_id))}")
        raise typer.Exit(1)
    out.print(
        f"reviewer {escape(reviewer_id)} disabled: {done.tokens} token(s) and {done.sessions}"
        f" session(s) revoked, {done.released} task(s) back in the queue"
    )


@app.command("enable-reviewer")
def enable_reviewer(reviewer_id: ReviewerId) -> None:
    """Let a disabled reviewer log in again; tokens and sessions revoked stay revoked."""
    _check_reviewer_id(reviewer_id)
    if not _with_review(lambda r: r.auth.enable_reviewer(reviewer_id, actor="cli")):
        err.print(f"no reviewer with id {escape(repr(reviewer_id))}")
        raise typer.Exit(1)
    out.print(f"reviewer {escape(reviewer_id)} enabled")
