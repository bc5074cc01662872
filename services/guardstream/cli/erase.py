"""`guardstream erase`: erase a post or an author's posts from every store, with a receipt."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape

from guardstream.cli.common import err, load_settings, out
from guardstream.verdict.erasure import ErasureReceipt, InvalidSelector, selector


def erase(
    tenant: Annotated[str, typer.Option(help="The tenant whose data is erased (always one).")],
    post: Annotated[
        list[str] | None, typer.Option("--post", help="A post id to erase (repeat for several).")
    ] = None,
    author: Annotated[
        str | None, typer.Option("--author", help="An author id: every post of theirs.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing; say what would be removed.")
    ] = False,
    by: Annotated[str, typer.Option(help="Who asked (kept in the receipt and audit).")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON.")] = False,
) -> None:
    """Remove the text of a post (or of every post of an author) and everything derived from
    it: review tables, verdict cache and human overrides, journal, latest decisions,
    near-duplicate fingerprints, the feedback archive and curated sets; mark adapters trained on
    it for retraining. Writes an erasure receipt (counts and hashed ids, no text). Kafka topics
    are time-retained: the receipt names each topic's retention. Exit 2 on an invalid request,
    1 when a store could not be reached (run it again: erasure is idempotent)."""
    try:
        sel = selector(tenant, posts=post or (), author=author)
        by = selector(tenant, author=by).author_id or "cli"  # the same rule as any id
    except InvalidSelector as exc:
        err.print(f"[red]invalid erasure request:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    settings = load_settings()
    # lazy: asyncpg and the review package only for this command
    from guardstream.review.erasure import STORE_ERRORS, erase_on_request
    from guardstream.review.store import ReviewStore

    async def main() -> ErasureReceipt:

        store = await ReviewStore.open(settings)
        try:
            return await erase_on_request(settings, store, sel, dry_run=dry_run, requested_by=by)
        finally:
            await store.close()

    try:
        receipt = asyncio.run(main())
    except STORE_ERRORS as exc:
        err.print(f"[red]erasure incomplete:[/red] {type(exc).__name__}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        out.print_json(receipt.model_dump_json())
        return
    head = "would remove" if dry_run else "removed"
    out.print(f"erasure {receipt.receipt_id} ({receipt.selector}, tenant {receipt.tenant}):")
    for store in receipt.stores:
        out.print(
            f"  {store.store}: found {store.found}, {head} "
            f"{store.found if dry_run else store.removed} - {escape(store.note)}",
            soft_wrap=True,
        )
    if dry_run:
        out.print("dry run: nothing was changed, no receipt written")
    else:
        out.print(json.dumps({"receipt": receipt.receipt_id, "removed": receipt.removed}))
