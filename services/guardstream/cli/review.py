"""`guardstream review`: the review process (API, console, consumers) and the reviewer
credentials' admin commands."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape

from guardstream.cli.common import err, load_settings, out, run_process
from guardstream.runtime.settings import Settings

if TYPE_CHECKING:
    from guardstream.review.wiring import ReviewServices

T = TypeVar("T")

# 18 random bytes: 24 URL-safe characters, 144 bits.
GENERATED_PASSWORD_BYTES = 18

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
        bool,
        typer.Option(help="Read the password from the first line of stdin (8+ characters)."),
    ] = False,
    generate_password: Annotated[
        bool,
        typer.Option(
            help="Generate a strong password and print it once. The default when stdin is"
            " not a terminal and --password-stdin is not given."
        ),
    ] = False,
    token: Annotated[
        bool,
        typer.Option(help="Also print a new API bearer token (the last line of stdout)."),
    ] = False,
) -> None:
    """Create or update a reviewer; the password is stored as a scrypt hash.

    The password comes from --password-stdin, a hidden prompt on a terminal, or is generated
    and printed once (--generate-password, and whenever there is no terminal to prompt on).
    Updating an existing reviewer resets the password and revokes their tokens and console
    sessions. The console's login page takes the reviewer id and this password; a token
    (--token) is for the API only. Exit 2 on invalid arguments."""
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
    if password_stdin and generate_password:
        err.print("give at most one of --password-stdin and --generate-password")
        raise typer.Exit(2)
    generated = generate_password or (not password_stdin and not _stdin_is_terminal())
    if generated:
        password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    elif password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        err.print("the password needs at least 8 characters")
        raise typer.Exit(2)
    settings = load_settings()
    reviewer = Reviewer(reviewer_id, tuple(tenant), chosen, on_call)

    async def main() -> tuple[tuple[int, int], str | None]:
        async with review_services(settings) as review:
            revoked = await review.auth.put_reviewer(reviewer, hash_password(password), actor="cli")
            if not token:
                return revoked, None
            value, _ = await review.auth.issue_token(reviewer)
            return revoked, value

    revoked, issued = asyncio.run(main())
    out.print(
        f"reviewer {escape(reviewer_id)} saved ({chosen.value};"
        f" tenants {escape(', '.join(tenant))})",
        soft_wrap=True,
    )
    if any(revoked):
        out.print(
            f"password reset: {revoked[0]} token(s) and {revoked[1]} console session(s) of the"
            " old one revoked",
            soft_wrap=True,
        )
    if generated:
        # Plain, on its own line: the one place this password is ever shown.
        sys.stdout.write(f"password (generated, shown once): {password}\n")
        sys.stdout.flush()
    given = "generated above" if generated else "you gave"
    out.print(
        f"log in to the console at {escape(console_login_url(settings))} as"
        f" {escape(reviewer_id)} with the password {given}"
        + (
            "; the token below is for the API only (Authorization: Bearer ...)"
            if token
            else "; --token also prints an API token"
        ),
        soft_wrap=True,
        highlight=False,
    )
    if issued:
        sys.stdout.write(issued + "\n")


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def console_login_url(settings: Settings) -> str:
    """Where a browser on this machine finds the console's login page (a wildcard listen
    address is reached at the loopback address)."""
    host = settings.review.host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104  (a listen address, read, not bound)
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.review.port}/console/login"


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
