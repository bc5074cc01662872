"""`guardstream` — run the processes, manage topics, send posts, run the local stack."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from guardstream.cli.feedback import feedback_app
from guardstream.contracts.events import Decision, Kind, dump
from guardstream.contracts.topics import CATALOGUE, TopicNames
from guardstream.runtime import logs
from guardstream.runtime.settings import Settings, every_setting

if TYPE_CHECKING:
    from guardstream.review.service import ReviewService

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)
topics_app = typer.Typer(no_args_is_help=True, help="The topic catalogue.")
model_app = typer.Typer(no_args_is_help=True, help="Model checkpoints.")
stack_app = typer.Typer(no_args_is_help=True, help="The local development stack.")
app.add_typer(topics_app, name="topics")
app.add_typer(model_app, name="model")
app.add_typer(stack_app, name="stack")
app.add_typer(feedback_app, name="feedback")
review_app = typer.Typer(
    invoke_without_command=True,
    help="The review console: API + console + consumers; reviewer credentials.",
)
app.add_typer(review_app, name="review")

out = Console()
err = Console(stderr=True)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from None


def _run_process(name: str) -> None:
    settings = load_settings()
    logs.configure(settings.process.log_level)
    from guardstream.runtime import telemetry
    from guardstream.runtime.process import install_stop_signals

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        if name == "triage":
            from guardstream.triage.main import run as run_triage

            await run_triage(settings, stop)
        elif name == "sla":
            from guardstream.sla.main import run as run_sla

            await run_sla(settings, stop)
        else:
            from guardstream.scorer.main import run as run_scorer

            await run_scorer(settings, stop)

    from guardstream.model.guard import ModelUnavailable
    from guardstream.policy import PolicyConflictError, PolicyLoadError
    from guardstream.scorer.engine import EngineDead

    try:
        handle = telemetry.setup(settings, name)
    except telemetry.TelemetryError as exc:
        err.print(f"[red]{name} cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        asyncio.run(main())
    except ModelUnavailable as exc:
        err.print(f"[red]{name} cannot start:[/red] {exc}")
        raise typer.Exit(3) from None
    except EngineDead as exc:
        err.print(f"[red]{name} stopped: the model engine died[/red] ({exc}); restart it")
        raise typer.Exit(4) from None
    except (PolicyLoadError, PolicyConflictError) as exc:
        err.print(f"[red]{name} cannot start: invalid policy packs[/red]\n{exc}")
        raise typer.Exit(2) from None
    finally:
        handle.shutdown()


@app.command()
def triage() -> None:
    """Run the triage process (posts → cache hits / score requests / DLQ)."""
    _run_process("triage")


@app.command()
def scorer() -> None:
    """Run the scorer process (score requests → Qwen3Guard-Gen on vLLM → decisions)."""
    _run_process("scorer")


@app.command()
def sla() -> None:
    """Run the SLA timer (contested items unreviewed past their deadline → safe, alerts)."""
    _run_process("sla")


@app.command()
def settings() -> None:
    """Show the effective configuration (secrets masked) with each setting's env name."""
    current = load_settings().public_view()
    table = Table("setting", "env", "value")
    for field in every_setting():
        table.add_row(field.path, ", ".join(field.env), str(current[field.path]))
    out.print(table)


@topics_app.command("create")
def topics_create() -> None:
    """Create every catalogue topic that does not exist yet (idempotent)."""
    from guardstream.runtime.kafka import ensure_topics
    from guardstream.sla.app import changelog_topic, ensure_changelog

    settings = load_settings()
    report = asyncio.run(ensure_topics(settings))
    # The SLA app's table changelog (co-partitioned with its sources) is created up front too.
    sla_changelog = "created " if asyncio.run(ensure_changelog(settings)) else "exists  "
    out.print(f"{sla_changelog} {changelog_topic(settings)}")
    for name in report.created:
        out.print(f"created  {name}")
    for name in report.existing:
        out.print(f"exists   {name}")
    for name in report.mismatched:
        err.print(f"[yellow]partition count differs from the catalogue:[/yellow] {name}")


@topics_app.command("list")
def topics_list() -> None:
    """Print the catalogue: topic, partitions, key, retention."""
    names = TopicNames(load_settings().namespace)
    table = Table("topic", "partitions", "key", "retention (days)", "purpose")
    for spec in CATALOGUE:
        table.add_row(
            names[spec.topic],
            str(spec.partitions),
            spec.key,
            f"{spec.retention_ms / 86_400_000:g}",
            spec.purpose,
        )
    out.print(table)


@app.command()
def produce(
    text: Annotated[str | None, typer.Option(help="Text of one post to send.")] = None,
    tenant: Annotated[str, typer.Option()] = "default",
    kind: Annotated[Kind, typer.Option(help="prompt, or response (needs --prompt).")] = Kind.PROMPT,
    prompt: Annotated[str | None, typer.Option(help="Response moderation: the prompt.")] = None,
    post_id: Annotated[str | None, typer.Option()] = None,
    samples: Annotated[bool, typer.Option(help="Send the built-in sample posts.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for and print each decision.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for decisions.")] = 120.0,
) -> None:
    """Send a post (or the samples) to posts.v1; with --wait print each decision as JSON."""
    if (text is None) == (not samples):
        err.print("give exactly one of --text or --samples")
        raise typer.Exit(2)
    settings = load_settings()
    from guardstream.runtime import telemetry

    # Traces only: a one-shot client serves no /metrics (the port may be a process's).
    handle = telemetry.setup(settings.replace(telemetry={"metrics_port": 0}), "produce")
    try:
        _produce(settings, text, tenant, kind, prompt, post_id, samples, wait, timeout)
    finally:
        handle.shutdown()


def _produce(
    settings: Settings,
    text: str | None,
    tenant: str,
    kind: Kind,
    prompt: str | None,
    post_id: str | None,
    samples: bool,
    wait: bool,
    timeout: float,
) -> None:
    from guardstream.devtools.produce import new_post, sample_posts, send, send_and_wait

    try:
        posts = (
            sample_posts(tenant)
            if samples
            else [new_post(text or "", tenant=tenant, kind=kind, prompt=prompt, post_id=post_id)]
        )
    except ValidationError as exc:
        from guardstream.contracts.events import describe_errors

        err.print(f"[red]invalid post:[/red] {describe_errors(exc)}")
        raise typer.Exit(2) from None
    if not wait:
        asyncio.run(send(settings, posts))
        for post in posts:
            out.print(f"sent {post.post_id}")
        return

    async def watch() -> int:
        seen = 0
        async for _topic, decision in send_and_wait(settings, posts, timeout):
            seen += 1
            _print_decision(decision, samples, posts)
        return seen

    seen = asyncio.run(watch())
    if seen < len(posts):
        err.print(f"timed out after {timeout:g}s: {len(posts) - seen} of {len(posts)} undecided")
        raise typer.Exit(1)


def _print_decision(decision: Decision, pretty: bool, posts: list) -> None:  # type: ignore[type-arg]
    if not pretty:
        sys.stdout.write(orjson.dumps(dump(decision)).decode() + "\n")
        sys.stdout.flush()
        return
    text = next((p.text for p in posts if p.post_id == decision.post_id), "")
    colour = {"safe": "green", "unsafe": "red", "controversial": "yellow"}[decision.verdict]
    conf = "" if decision.confidence is None else f" {decision.confidence:.3f}"
    out.print(
        f"[{colour}]{decision.action.value:>6} {decision.verdict.value:<13}[/{colour}]"
        f"{conf} {decision.source.value:<5} {', '.join(decision.categories) or '-':<24} "
        f"{text[:60]}",
        soft_wrap=True,
    )


@model_app.command("build-tiny")
def build_tiny(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Directory to build into.")] = None,
) -> None:
    """Build (or reuse) the project's tiny offline Qwen3Guard-format test checkpoint."""
    from guardstream.model.tiny import build_tiny_checkpoint, ensure_tiny_checkpoint

    logs.configure("INFO")
    settings = load_settings()
    path = (
        build_tiny_checkpoint(out_dir)
        if out_dir
        else ensure_tiny_checkpoint(settings.model.cache_dir)
    )
    out.print(str(path))


RunDir = Annotated[Path, typer.Option(help="Where pid files and logs go.")]


@stack_app.command("up")
def stack_up(
    run_dir: RunDir = Path(".run"),
    kafka_port: Annotated[int, typer.Option()] = 9092,
    health_port_base: Annotated[int, typer.Option()] = 18081,
    metrics_port_base: Annotated[
        int, typer.Option(help="Serve /metrics from this port on, one per process; 0 = off.")
    ] = 0,
) -> None:
    """Start broker (unless KAFKA_BOOTSTRAP is set), topics, triage and scorer; wait until ready."""
    from guardstream.devtools.stack import StackConfig, StackError, up

    try:
        up(StackConfig(run_dir, kafka_port, health_port_base, metrics_port_base), out.print)
    except StackError as exc:
        err.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print("[green]guardstream is up[/green]")


@stack_app.command("down")
def stack_down(run_dir: RunDir = Path(".run")) -> None:
    """Stop the processes and the local broker started by `stack up`."""
    from guardstream.devtools.stack import StackConfig, down

    down(StackConfig(run_dir), out.print)


@review_app.callback()
def review(ctx: typer.Context) -> None:
    """Serve the review API and console and run its consumers (one process)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    logs.configure(settings.process.log_level)
    from guardstream.policy import PolicyConflictError, PolicyLoadError
    from guardstream.review.main import run as run_review
    from guardstream.runtime import telemetry
    from guardstream.runtime.process import install_stop_signals

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_review(settings, stop)

    try:
        handle = telemetry.setup(settings, "review")
    except telemetry.TelemetryError as exc:
        err.print(f"[red]review cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        asyncio.run(main())
    except (PolicyLoadError, PolicyConflictError) as exc:
        err.print(f"[red]review cannot start: invalid policy packs[/red]\n{exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]review cannot start:[/red] {exc}")
        raise typer.Exit(3) from None
    finally:
        handle.shutdown()


@review_app.command("add-reviewer")
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
    from guardstream.review.auth import hash_password
    from guardstream.review.logic import Reviewer, Role

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
        from guardstream.policy import load_registry
        from guardstream.review.service import ReviewService
        from guardstream.review.store import ReviewStore

        store = await ReviewStore.open(settings)
        try:
            await store.put_reviewer(reviewer, hash_password(password), actor="cli")
            if not token:
                return None
            service = ReviewService(
                store,
                load_registry(settings.policy.dir),
                tags=(),
                lock_s=settings.review.lock_s,
                token_ttl_s=settings.review.token_ttl_s,
            )
            value, _ = await service.issue_token(reviewer)
            return value
        finally:
            await store.close()

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


def _with_review_service(work: Callable[[ReviewService], Awaitable[T]]) -> T:
    """Run `work` against the review store of this deployment (migrated first), then close."""
    settings = load_settings()

    async def main() -> T:
        from guardstream.policy import load_registry
        from guardstream.review.service import ReviewService
        from guardstream.review.store import ReviewStore

        store = await ReviewStore.open(settings)
        try:
            service = ReviewService(
                store,
                load_registry(settings.policy.dir),
                tags=(),
                lock_s=settings.review.lock_s,
                token_ttl_s=settings.review.token_ttl_s,
            )
            return await work(service)
        finally:
            await store.close()

    return asyncio.run(main())


ReviewerId = Annotated[str, typer.Option("--id", help="The reviewer's id.")]


@review_app.command("revoke-token")
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
        revoked = _with_review_service(lambda svc: svc.revoke_all(reviewer_id, actor="cli"))
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
    owner = _with_review_service(lambda svc: svc.revoke_token(token, actor="cli"))
    if owner is None:
        err.print("no such token (unknown, already revoked or purged after expiry)")
        raise typer.Exit(1)
    out.print(f"token of reviewer {escape(owner)} revoked")


@review_app.command("disable-reviewer")
def disable_reviewer(reviewer_id: ReviewerId) -> None:
    """Disable a reviewer at once: no login, every token and session revoked, the tasks they
    hold back in the queue. `enable-reviewer` undoes it (with new credentials)."""
    _check_reviewer_id(reviewer_id)
    done = _with_review_service(lambda svc: svc.disable_reviewer(reviewer_id, actor="cli"))
    if done is None:
        err.print(f"no reviewer with id {escape(repr(reviewer_id))}")
        raise typer.Exit(1)
    out.print(
        f"reviewer {escape(reviewer_id)} disabled: {done.tokens} token(s) and {done.sessions}"
        f" session(s) revoked, {done.released} task(s) back in the queue"
    )


@review_app.command("enable-reviewer")
def enable_reviewer(reviewer_id: ReviewerId) -> None:
    """Let a disabled reviewer log in again; tokens and sessions revoked stay revoked."""
    _check_reviewer_id(reviewer_id)
    if not _with_review_service(lambda svc: svc.enable_reviewer(reviewer_id, actor="cli")):
        err.print(f"no reviewer with id {escape(repr(reviewer_id))}")
        raise typer.Exit(1)
    out.print(f"reviewer {escape(reviewer_id)} enabled")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check this deployment: broker, topics, Redis, PostgreSQL, model files, policy packs.

    Each check prints ok / warn / FAIL with what was found and how to fix it. Exit 1 when any
    check failed. Nothing is created, downloaded or started; secrets are never printed."""
    import logging

    from guardstream.devtools import doctor as checks

    try:
        current = Settings()
    except ValidationError as exc:
        finding = checks.fail(
            "config", f"invalid configuration: {exc}", "fix the environment variables named above"
        )
        if as_json:
            sys.stdout.write(orjson.dumps({"ok": False, "checks": [finding.as_dict()]}).decode())
            sys.stdout.write("\n")
        else:
            out.print(checks.render_text([finding]), markup=False, highlight=False)
        raise typer.Exit(1) from None
    # The report says what the clients' own retry logs would: keep them out of it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    findings = asyncio.run(checks.diagnose(current))
    if as_json:
        sys.stdout.write(orjson.dumps(checks.report(current, findings)).decode() + "\n")
    else:
        out.print(checks.render_text(findings), markup=False, highlight=False, soft_wrap=True)
    if not checks.healthy(findings):
        raise typer.Exit(1)


@app.command()
def calibrate(
    path: Annotated[Path, typer.Argument(help="Labelled JSONL (the feedback archive format).")],
    bins: Annotated[int, typer.Option(min=2, max=50, help="Equal-width confidence bins.")] = 10,
) -> None:
    """Reliability table (confidence bins vs accuracy) and ECE, overall and per language and
    per predicted category. Lines that cannot be used are listed by number, never dropped
    silently."""
    from guardstream.scorer.calibration import load, reliability, slices

    if not path.is_file():
        err.print(f"no such file: {path}")
        raise typer.Exit(2)
    items, problems = load(path)
    for number, problem in problems[:20]:
        err.print(f"line {number}: {problem} (left out)")
    if len(problems) > 20:
        err.print(f"... and {len(problems) - 20} more lines left out")
    if not items:
        err.print(f"no usable lines in {path} ({len(problems)} left out)")
        raise typer.Exit(2)

    overall = reliability(items, bins)
    table = Table(title=f"Reliability ({overall.count} items, {len(problems)} left out)")
    for column in ("confidence bin", "items", "mean confidence", "accuracy", "gap"):
        table.add_column(column, justify="right")
    for b in overall.bins:
        gap = f"{b.accuracy - b.confidence:+.3f}" if b.count else "-"
        table.add_row(
            f"{b.low:.1f}–{b.high:.1f}",
            str(b.count),
            f"{b.confidence:.3f}" if b.count else "-",
            f"{b.accuracy:.3f}" if b.count else "-",
            gap,
        )
    out.print(table)
    out.print(f"ECE {overall.ece:.4f}  accuracy {overall.accuracy:.3f}")

    per = Table(title="ECE per slice")
    for column in ("slice", "value", "items", "accuracy", "ECE"):
        per.add_column(
            column, justify="right" if column in ("items", "accuracy", "ECE") else "left"
        )
    summary: dict[str, dict[str, float]] = {}
    for kind, value, members in slices(items):
        result = reliability(members, bins)
        per.add_row(kind, value, str(result.count), f"{result.accuracy:.3f}", f"{result.ece:.4f}")
        summary[f"{kind}:{value}"] = {"items": result.count, "ece": round(result.ece, 4)}
    out.print(per)
    line = {"items": overall.count, "left_out": len(problems), "ece": round(overall.ece, 4)}
    out.print_json(orjson.dumps({**line, "slices": summary}).decode())
