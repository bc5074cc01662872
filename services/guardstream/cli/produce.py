"""`guardstream produce`: send a post (or the samples) and, with --wait, print the decisions."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError

from guardstream.cli.common import err, load_settings, out
from guardstream.contracts.events import Decision, Kind, describe_errors, dump
from guardstream.devtools.produce import new_post, sample_posts, send, send_and_wait
from guardstream.runtime import telemetry
from guardstream.runtime.settings import Settings


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

    try:
        posts = (
            sample_posts(tenant)
            if samples
            else [new_post(text or "", tenant=tenant, kind=kind, prompt=prompt, post_id=post_id)]
        )
    except ValidationError as exc:
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
