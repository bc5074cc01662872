"""`guardstream produce`: send a post (from the command line, a file, stdin or a JSON Lines
file of posts, or the samples) and, with --wait, print each post's outcome as it arrives: its
decision, or the DLQ record of a post no process would accept."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.markup import escape
from rich.text import Text

from guardstream.cli.common import err, load_settings, out
from guardstream.cli.output import progress
from guardstream.contracts.events import Kind, Post, describe_errors, dump
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import (
    DeadLettered,
    Decided,
    TopicsMissing,
    new_post,
    oversized,
    read_posts_jsonl,
    sample_posts,
    send,
    send_and_watch,
)
from guardstream.runtime import telemetry
from guardstream.runtime.settings import Settings

STDIN = "-"
PROBLEMS_SHOWN = 20  # bad lines listed one by one; the rest are counted


class Exit(IntEnum):
    """`produce`'s exit codes (the --help and the docs list them)."""

    OK = 0
    TIMED_OUT = 1  # --wait: some post got no outcome in time; or the broker was not reachable
    INVALID = 2  # bad arguments or input: nothing was sent
    DEAD_LETTERED = 3  # --wait: every post has an outcome, and at least one went to the DLQ


def produce(
    text: Annotated[
        str | None, typer.Option(help="Text of one post to send; '-' reads it from stdin.")
    ] = None,
    text_file: Annotated[
        str | None,
        typer.Option(
            help="Send one post whose text is this UTF-8 file ('-': stdin), any size;"
            " one final newline is dropped.",
            metavar="PATH",
        ),
    ] = None,
    jsonl: Annotated[
        str | None,
        typer.Option(
            help="Send the posts of a JSON Lines file ('-': stdin), one object a line:"
            ' {"text": …} and optionally post_id, tenant, author_id, kind, prompt, lang,'
            " region. Every line is checked first; bad lines are listed by number and"
            " nothing is sent.",
            metavar="PATH",
        ),
    ] = None,
    samples: Annotated[bool, typer.Option(help="Send the built-in sample posts.")] = False,
    tenant: Annotated[
        str, typer.Option(help="The post's tenant (with --jsonl: for lines that name none).")
    ] = "default",
    kind: Annotated[
        Kind | None, typer.Option(help="prompt (default), or response (needs --prompt).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Response moderation: the prompt.")] = None,
    lang: Annotated[str | None, typer.Option(help="The post's language, e.g. en (BCP 47).")] = None,
    post_id: Annotated[str | None, typer.Option(help="Default: a new p-<uuid>.")] = None,
    wait: Annotated[
        bool,
        typer.Option(help="Wait for each post's outcome and print it (decision or DLQ)."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the outcomes (with --wait).")
    ] = 120.0,
) -> None:
    """Send a post (or many) to posts.v1; with --wait print each outcome as it arrives.

    Without --samples each decision is one JSON line on stdout; a post a process refused
    (empty after normalisation, longer than GUARDSTREAM_MAX_TEXT_CHARS, ...) is reported
    the moment its DLQ record appears, with the reason, as a JSON line
    {"post_id", "outcome": "dlq", "reason", "detail", "consumer", ...} and on stderr.

    Exit codes: 0 every post sent (and decided, with --wait); 1 timed out with posts still
    undecided, or the broker could not be reached; 2 invalid arguments or input (nothing
    sent); 3 every post has an outcome and at least one went to the DLQ."""
    sources = [text is not None, text_file is not None, jsonl is not None, samples]
    if sum(sources) != 1:
        err.print("give exactly one of --text, --text-file, --jsonl or --samples")
        raise typer.Exit(Exit.INVALID)
    if (jsonl is not None or samples) and (
        kind is not None or prompt is not None or post_id is not None or lang is not None
    ):
        err.print(
            "--kind, --prompt, --lang and --post-id are for one post: not with --jsonl or"
            " --samples (a JSON line carries its own)"
        )
        raise typer.Exit(Exit.INVALID)
    if [text, text_file, jsonl].count(STDIN) > 1:
        err.print("stdin can be read once")
        raise typer.Exit(Exit.INVALID)
    settings = load_settings()
    if samples:
        posts = sample_posts(tenant)
    elif jsonl is not None:
        posts = _read_jsonl(jsonl, tenant)
    else:
        body = text if text is not None and text != STDIN else _read_text(text_file or STDIN)
        try:
            posts = [
                new_post(
                    body,
                    tenant=tenant,
                    kind=kind or Kind.PROMPT,
                    prompt=prompt,
                    lang=lang,
                    post_id=post_id,
                )
            ]
        except ValidationError as exc:
            err.print(f"[red]invalid post:[/red] {escape(describe_errors(exc))}")
            raise typer.Exit(Exit.INVALID) from None
    too_large = oversized(posts, settings.kafka.max_request_bytes)
    for post, size in too_large[:PROBLEMS_SHOWN]:
        err.print(
            f"[red]post {escape(post.post_id)} is {size:,} bytes:[/red] more than a produce"
            f" request may carry (GUARDSTREAM_KAFKA_MAX_REQUEST_BYTES ="
            f" {settings.kafka.max_request_bytes:,})"
        )
    if too_large:
        raise typer.Exit(Exit.INVALID)

    # Traces only: a one-shot client serves no /metrics (the port may be a process's).
    handle = telemetry.setup(settings.replace(telemetry={"metrics_port": 0}), "produce")
    try:
        code = asyncio.run(_produce(settings, posts, wait=wait, wait_s=timeout, pretty=samples))
    except TopicsMissing as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        code = Exit.TIMED_OUT
    except KafkaError as exc:
        err.print(
            f"[red]the broker at {escape(settings.kafka.bootstrap)} did not answer:[/red]"
            f" {escape(str(exc) or type(exc).__name__)} (is it up? `guardstream doctor`)"
        )
        code = Exit.TIMED_OUT
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): nothing more can be said; exit 1 quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = Exit.TIMED_OUT
    finally:
        handle.shutdown()
    if code != Exit.OK:
        raise typer.Exit(code)


def _read_bytes(path: str) -> bytes:
    """The bytes of `path` ('-': stdin); exit 2 with the reason when it cannot be read."""
    if path == STDIN:
        if sys.stdin.isatty():
            err.print("reading from stdin (end with Ctrl-D)")
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        err.print(f"no such file: {escape(path)}")
    except OSError as exc:
        err.print(f"cannot read {escape(path)}: {escape(exc.strerror or type(exc).__name__)}")
    raise typer.Exit(Exit.INVALID)


def _read_text(path: str) -> str:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "stdin" if path == STDIN else escape(path)
        err.print(f"[red]{where} is not UTF-8 text[/red] (byte {exc.start:,} is not)")
        raise typer.Exit(Exit.INVALID) from None
    return text.removesuffix("\n").removesuffix("\r")


def _read_jsonl(path: str, tenant: str) -> list[Post]:
    read = read_posts_jsonl(_read_bytes(path), tenant=tenant)
    where = "stdin" if path == STDIN else path
    for number, problem in read.problems[:PROBLEMS_SHOWN]:
        err.print(f"{escape(where)}:{number}: {escape(problem)}")
    if len(read.problems) > PROBLEMS_SHOWN:
        err.print(f"... and {len(read.problems) - PROBLEMS_SHOWN} more bad lines")
    if read.problems:
        err.print(f"[red]{len(read.problems)} bad line(s) in {escape(where)}: nothing sent[/red]")
        raise typer.Exit(Exit.INVALID)
    if not read.posts:
        err.print(f"[red]no posts in {escape(where)}: nothing sent[/red]")
        raise typer.Exit(Exit.INVALID)
    return read.posts


@dataclass
class _Tally:
    decided: int = 0
    dead: int = 0


async def _produce(
    settings: Settings, posts: list[Post], *, wait: bool, wait_s: float, pretty: bool
) -> Exit:
    with progress() as bar:
        sending = bar.add_task("sent", total=len(posts))

        def acked() -> None:
            bar.advance(sending)

        if not wait:
            await send(settings, posts, acked)
            for post in posts:
                out.print(f"sent {escape(post.post_id)}", soft_wrap=True)
            return Exit.OK
        deciding = bar.add_task("decided", total=len(posts))
        texts = {p.post_id: p.text for p in posts}
        tally = _Tally()
        async for outcome in send_and_watch(settings, posts, wait_s, acked):
            bar.advance(deciding)
            if isinstance(outcome, DeadLettered):
                tally.dead += 1
                _report_dead_letter(outcome, settings, pretty)
            else:
                tally.decided += 1
                _print_decision(outcome, texts, pretty)
    undecided = len(posts) - tally.decided - tally.dead
    if tally.dead:
        err.print(
            f"[red]{tally.dead} of {len(posts)} went to the DLQ[/red]"
            f" ({TopicNames(settings.namespace)[Topic.DLQ]}): not decided, see the reasons above"
        )
    if undecided:
        err.print(f"timed out after {wait_s:g}s: {undecided} of {len(posts)} undecided")
        return Exit.TIMED_OUT
    return Exit.DEAD_LETTERED if tally.dead else Exit.OK


def _report_dead_letter(outcome: DeadLettered, settings: Settings, pretty: bool) -> None:
    record = outcome.record
    if not pretty:
        line = {
            "post_id": outcome.post_id,
            "outcome": "dlq",
            "reason": record.reason,
            "detail": record.detail,
            "consumer": record.consumer,
            "payload_size": record.payload_size,
            "topic": outcome.topic,
        }
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
    line_text = Text.assemble(
        ("   dlq ", "bold red"),
        (f"{record.reason}", "red"),
        f" {outcome.post_id}: {record.detail} (refused by {record.consumer})",
    )
    err.print(line_text, soft_wrap=True, highlight=False)


def _print_decision(outcome: Decided, texts: dict[str, str], pretty: bool) -> None:
    decision = outcome.decision
    if not pretty:
        sys.stdout.write(orjson.dumps(dump(decision)).decode() + "\n")
        sys.stdout.flush()
        return
    colour = {"safe": "green", "unsafe": "red", "controversial": "yellow"}[decision.verdict]
    conf = "" if decision.confidence is None else f" {decision.confidence:.3f}"
    row = Text.assemble(
        (f"{decision.action.value:>6} {decision.verdict.value:<13}", colour),
        f"{conf} {decision.source.value:<5} {', '.join(decision.categories) or '-':<24} ",
        " ".join(texts.get(decision.post_id, "").split())[:60],
    )
    out.print(row, soft_wrap=True, highlight=False)
