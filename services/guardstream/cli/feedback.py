"""`guardstream feedback …`: the weekly training cycle and the loop's report."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlparse

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from guardstream.cli.common import err, load_settings, out, tenant_option, write_output
from guardstream.cli.output import table
from guardstream.contracts.events import Verdict
from guardstream.contracts.feedback import FeedbackSample
from guardstream.feedback.casebook import PER_PACK, CaseItem, pack_id, pick_cases
from guardstream.feedback.clusters import ContestedItem, as_json, cluster_items
from guardstream.feedback.clusters import render_html as render_cluster_page
from guardstream.feedback.curation import DEFAULT_EXPERT_TERMS, CurationConfig
from guardstream.feedback.dataset import NotTrainable, example
from guardstream.feedback.evaluate import LabelScorer
from guardstream.feedback.job import (
    FeedbackConfig,
    ShadowReport,
    approve,
    evaluate_shadow,
    run_cycle,
)
from guardstream.feedback.report import (
    ADAPTER_COLUMNS,
    adapter_row,
    build_report,
    read_cards,
    render_html,
)
from guardstream.feedback.shadow import ShadowConfig
from guardstream.feedback.shadow_log import read_shadow_log
from guardstream.feedback.train import LoraParams
from guardstream.model.adapters import AdapterError, AdapterRegistry
from guardstream.model.guard import resolve_model
from guardstream.policy import load_registry
from guardstream.review.logic import text_preview
from guardstream.review.qa_period import parse_period, previous_period
from guardstream.runtime import logs
from guardstream.runtime.settings import Settings
from guardstream.verdict.archive import Archive, ArchiveError
from guardstream.verdict.embeddings import USE_MULTILINGUAL_V3, UseEmbedder, from_bytes

if TYPE_CHECKING:
    from guardstream.review.services.qa import QaSampled
    from guardstream.review.store.context import ContestedRow

app = typer.Typer(no_args_is_help=True, help="The feedback loop (reviews → LoRA).")


def config_from(settings: Settings) -> FeedbackConfig:

    terms = tuple(t.strip() for t in settings.feedback.expert_terms.split(",") if t.strip())
    return FeedbackConfig(
        min_samples=settings.feedback.min_samples,
        promotion_margin=settings.feedback.promotion_margin,
        shared_pool=frozenset(
            t.strip() for t in settings.feedback.shared_pool.split(",") if t.strip()
        ),
        curation=CurationConfig(
            confidence_below=settings.feedback.confidence_below,
            expert_terms=terms or DEFAULT_EXPERT_TERMS,
            anchor_ratio=settings.feedback.anchor_ratio,
            min_judges=settings.feedback.min_judges,
            reviewer_cap=settings.feedback.reviewer_cap,
        ),
        lora=LoraParams(
            learning_rate=settings.feedback.learning_rate, max_steps=settings.feedback.train_steps
        ),
        reasons=settings.feedback.train_reasons,
        shadow=ShadowConfig(
            min_samples=settings.feedback.shadow_min_samples,
            min_labelled=settings.feedback.shadow_min_labelled,
            margin=settings.feedback.promotion_margin,
            fpr_tolerance=settings.feedback.shadow_fpr_tolerance,
            window=timedelta(days=settings.feedback.shadow_window_days),
            require_approval=not settings.feedback.auto_promote,
            min_judges=settings.feedback.min_judges,
            reviewer_cap=settings.feedback.reviewer_cap,
        ),
        redaction={p.id: p.redact for p in load_registry(settings.policy.dir).packs},
    )


def _shadow(settings: Settings, tenant: str, *, apply: bool) -> ShadowReport:
    """The shadow evaluation of `tenant`'s candidate (the shadow topic is read only when one
    is in shadow, so a deployment without shadow traffic needs no broker for the job)."""

    if settings.model.adapter_dir is None:
        err.print("set GUARDSTREAM_ADAPTER_DIR: the adapter registry the scorers read")
        raise typer.Exit(2)
    registry = AdapterRegistry(settings.model.adapter_dir)
    if registry.snapshot(fresh=True).shadow.get(tenant) is None:
        return ShadowReport("none", f"no candidate is in shadow for {tenant!r}")
    log = asyncio.run(read_shadow_log(settings))
    if log.invalid:
        err.print(f"[yellow]{log.invalid} records on the shadow topic are not shadow records[/]")
    return evaluate_shadow(
        Archive(settings.feedback.dir),
        registry,
        log.records,
        datetime.now(UTC),
        config_from(settings).shadow,
        tenant=tenant,
        apply=apply,
    )


def _shadow_json(report: ShadowReport) -> dict[str, object]:
    return {
        "status": report.status,
        "detail": report.detail,
        "candidate": report.candidate,
        "metrics": report.metrics.as_dict() if report.metrics else None,
    }


@app.command("shadow-report")
def shadow_report(
    tenant: Annotated[str, typer.Option(help="Whose candidate: a tenant, or * for all.")] = "*",
) -> None:
    """How the shadow candidate does on live traffic so far (agreement with the serving
    adapter, block rates, accuracy and false-positive rates against later human labels) and
    what the next `feedback run` would do with it; changes nothing. Prints one JSON line."""

    settings = load_settings()
    try:
        report = _shadow(settings, tenant, apply=False)
    except ArchiveError as exc:
        err.print(f"[red]the archive has a corrupt record:[/red] {exc}")
        raise typer.Exit(1) from None
    sys.stdout.write(orjson.dumps(_shadow_json(report)).decode() + "\n")


@app.command("approve")
def approve_cmd(
    run: Annotated[str, typer.Argument(help="The training run's adapter id (fb-…).")],
    by: Annotated[str, typer.Option("--by", help="Who approves: your reviewer or staff id.")],
) -> None:
    """Record your approval of a trained adapter in the registry (its card and the history).
    Unless GUARDSTREAM_FEEDBACK_AUTO_PROMOTE is set, a candidate is promoted only with one: if
    it already passed the shadow gate it is promoted now, else when it passes. One JSON line."""

    settings = load_settings()
    if settings.model.adapter_dir is None:
        err.print("set GUARDSTREAM_ADAPTER_DIR: the adapter registry the scorers read")
        raise typer.Exit(2)
    registry = AdapterRegistry(settings.model.adapter_dir)
    try:
        done = approve(settings.feedback.dir, registry, run, by)
    except AdapterError as exc:
        err.print(f"[red]cannot approve:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    sys.stdout.write(
        orjson.dumps(
            {
                "adapter": done.adapter_id,
                "by": done.by,
                "at": done.at,
                "promoted": done.promoted,
                "detail": done.detail,
            }
        ).decode()
        + "\n"
    )


@app.command("report")
def report(
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as one HTML page.")
    ] = None,
) -> None:
    """Print the loop's health: samples per week, disagreement, agreement, adapter history."""

    settings = load_settings()
    try:
        samples = Archive(settings.feedback.dir).read()
    except ArchiveError as exc:
        err.print(f"[red]the archive has a corrupt record:[/red] {exc}")
        raise typer.Exit(1) from None
    loop = build_report(samples, read_cards(settings.feedback.dir))
    weeks = table("week", "samples", "model said controversial", title="Reviewed samples")
    for week, n in loop.per_week.items():
        weeks.add_row(week, str(n), f"{loop.controversial_by_week[week].value:.0%}")
    out.print(weeks)
    for title, rates in (
        ("Disagreement by category", loop.disagreement_by_category),
        ("Disagreement by language", loop.disagreement_by_lang),
    ):
        listing = table("", "rate", "of", title=title)
        for name, rate in rates.items():
            listing.add_row(name, f"{rate.value:.0%}", str(rate.total))
        out.print(listing)
    # Beside the raw share: Krippendorff's alpha (agreement beyond chance; "-": undefined).
    for title, agreements in (
        ("Reviewer agreement with QA", loop.reviewer_agreement),
        ("QA agreement by category", loop.category_agreement),
        ("QA agreement overall", {"all": loop.overall_agreement}),
    ):
        listing = table("", "agreement", "alpha", "of", title=title)
        for name, agreement in agreements.items():
            alpha = agreement.alpha
            listing.add_row(
                name,
                f"{agreement.rate.value:.0%}",
                "-" if alpha is None else f"{alpha:.2f}",
                str(len(agreement.pairs)),
            )
        out.print(listing)
    adapters = table(*ADAPTER_COLUMNS, title="Adapters")
    for card in loop.adapters:
        adapters.add_row(*adapter_row(card))
    out.print(adapters)
    if html_out is not None:
        write_output(html_out, render_html(loop), "--html")
        out.print(f"wrote {escape(str(html_out))}")


def _exit_unless_loadable(model: str) -> None:
    """Exit 3 at once, saying what to do, when `model` is neither on this machine nor
    reachable: loading it would retry the model hub for most of a minute, then raise."""
    if Path(model).expanduser().is_dir():
        return
    # lazy: transformers and its hub client only for a run that trains
    from huggingface_hub import constants, is_offline_mode
    from transformers import AutoConfig

    with contextlib.suppress(OSError):
        AutoConfig.from_pretrained(model, local_files_only=True)
        return  # in the local hub cache
    endpoint = urlparse(constants.ENDPOINT)
    if is_offline_mode():
        why = "the model hub is switched off here (HF_HUB_OFFLINE)"
    elif not _reachable(endpoint.hostname or "huggingface.co", endpoint.port or 443):
        why = f"{endpoint.hostname} cannot be reached"
    else:
        return  # it will be downloaded
    err.print(
        f"[red]cannot load model {escape(model)}:[/red] it is not in the local cache and {why}."
        " GUARDSTREAM_MODEL=tiny trains on guardstream's offline test checkpoint (`make up`"
        " writes it to .env); or point GUARDSTREAM_MODEL at a local directory of weights."
    )
    raise typer.Exit(3)


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=3):
        return True
    return False


@app.command("run")
def run(
    force: Annotated[
        bool, typer.Option(help="Train even with fewer new curated samples than required.")
    ] = False,
    tenant: Annotated[str, typer.Option(help="Whose adapter: a tenant, or * for all.")] = "*",
) -> None:
    """The weekly cycle. First the shadow evaluation: the tenant's candidate in shadow is
    promoted if it beat the serving adapter on live traffic against human labels and a person
    approved it (`feedback approve`; else it waits, awaiting_approval), retired if it lost or
    ran out of time, else kept. Then, with no candidate in shadow: curate the
    archive, train a LoRA adapter when enough new curated samples arrived, evaluate it against
    the serving one on held-out samples, and put it in shadow if it is better. Prints one JSON
    line (status skipped / shadowing / rejected, and the shadow evaluation's outcome)."""

    settings = load_settings()
    logs.configure(settings.process.log_level)
    if settings.model.adapter_dir is None:
        err.print("set GUARDSTREAM_ADAPTER_DIR: the adapter registry the scorers read")
        raise typer.Exit(2)
    base, _model_id = resolve_model(settings)
    _exit_unless_loadable(base)
    registry = AdapterRegistry(settings.model.adapter_dir)
    try:
        shadowed = _shadow(settings, tenant, apply=True)
    except ArchiveError as exc:
        err.print(f"[red]the archive has a corrupt record:[/red] {exc}")
        raise typer.Exit(1) from None
    prescreen = None
    if settings.feedback.prescreen_model is not None:
        small, _ = resolve_model(
            settings.replace(model={"name": settings.feedback.prescreen_model})
        )
        _exit_unless_loadable(small)
        screener = LabelScorer(small)

        def prescreen(sample: FeedbackSample) -> tuple[Verdict, float]:
            try:
                return screener.predict(example(sample))
            except NotTrainable:
                return sample.human_verdict, 0.0  # nothing to check; training reports it

    with Progress(
        TextColumn("training"), BarColumn(), TextColumn("{task.description}"), console=err
    ) as bar:
        task = bar.add_task("", total=None)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, description=f"loss {loss:.4f}")

        try:
            report = run_cycle(
                Archive(settings.feedback.dir),
                base,
                registry,
                datetime.now(UTC),
                config_from(settings),
                prescreen=prescreen,
                force=force,
                progress=progress,
                tenant=tenant,
            )
        except ArchiveError as exc:
            err.print(f"[red]the archive has a corrupt record:[/red] {exc}")
            raise typer.Exit(1) from None
    sys.stdout.write(
        orjson.dumps(
            {
                "status": report.status,
                "detail": report.detail,
                "adapter": report.adapter_id,
                "new_curated": report.new_curated,
                "counts": report.counts,
                "metrics": report.metrics,
                "suspects": report.suspects,
                "shadow": _shadow_json(shadowed),
            }
        ).decode()
        + "\n"
    )


@app.command("qa-sample")
def qa_sample_cmd(
    size: Annotated[
        int | None,
        typer.Option(min=0, help="Reviews to sample (default GUARDSTREAM_QA_SAMPLE_SIZE)."),
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(help="YYYY-MM or YYYY-Www (default: the last finished month or week)."),
    ] = None,
) -> None:
    """QA audit (the seeds' 质检): sample a period's first reviews, spread over reviewers, into
    the seniors' QA queue in the review database, and close earlier batches (a
    `qa_agreement_low` alert is queued for any reviewer below GUARDSTREAM_QA_AGREEMENT_MIN).
    The review process does this itself on its timer; this command is for a backfill. A period
    is sampled once: running it again changes nothing. Prints one JSON line."""

    settings = load_settings()
    try:
        due = (
            parse_period(period)
            if period
            else previous_period(datetime.now(UTC), settings.qa.cadence)
        )
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None

    async def sample() -> QaSampled:
        # lazy: asyncpg and the review package only for this command
        from guardstream.review.wiring import review_services

        async with review_services(settings) as review:
            return await review.qa.sample(due, size)

    result = asyncio.run(sample())
    sys.stdout.write(
        orjson.dumps(
            {
                "period": result.period,
                "new": result.created,
                "sampled": result.sampled,
                "closed": list(result.closed),
            }
        ).decode()
        + "\n"
    )


class ClusterFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    HTML = "html"


@app.command("clusters")
def clusters_cmd(
    days: Annotated[int, typer.Option(min=1, max=3650, help="Decided in the last N days.")] = 30,
    tenant: Annotated[
        str | None, typer.Option(help="One tenant (default: all).", callback=tenant_option)
    ] = None,
    fmt: Annotated[
        ClusterFormat, typer.Option("--format", help="table, json (one document) or html.")
    ] = ClusterFormat.TABLE,
    html_out: Annotated[
        Path | None, typer.Option("--out", help="With --format html: write the page here.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=100, help="Clusters per tenant/lang.")] = 10,
    min_size: Annotated[int, typer.Option(min=1, help="Smallest cluster listed.")] = 2,
) -> None:
    """Contested-case report: the most frequent clusters of contested review items (the model
    said controversial, or a reviewer corrected it) per tenant and language, by the meaning of
    their texts, with sizes, human verdicts, reasons, examples and trend (last 7 days against
    the 7 before) - the input to the guidance users see before posting."""
    settings = load_settings()
    now = datetime.now(UTC)

    async def read() -> list[ContestedRow]:
        # lazy: asyncpg and the review store only for this command
        from guardstream.review.store import ReviewStore

        store = await ReviewStore.open(settings)
        try:
            return await store.context.contested(now - timedelta(days=days), tenant, 50_000)
        finally:
            await store.close()

    items = []
    for row in asyncio.run(read()):
        if row.model != USE_MULTILINGUAL_V3:
            continue  # vectors of another model do not meet these
        items.append(
            ContestedItem(
                task_id=row.task_id,
                tenant=row.tenant,
                lang=row.lang or "und",
                vector=from_bytes(row.vector, UseEmbedder.dim),
                decided_at=row.decided_at,
                human_verdict=row.human_verdict,
                model_verdict=row.model_verdict,
                corrected=row.corrected,
                reason=row.reason,
                preview=text_preview(row.head) if row.head is not None else None,
            )
        )
    found = cluster_items(items, now, top=top, min_size=min_size)
    if fmt is ClusterFormat.JSON:
        sys.stdout.write(orjson.dumps(as_json(found)).decode() + "\n")
    elif fmt is ClusterFormat.HTML:
        page = render_cluster_page(found, now)
        if html_out is None:
            sys.stdout.write(page + "\n")
        else:
            write_output(html_out, page, "--out")
            out.print(f"wrote {escape(str(html_out))}")
    else:
        listing = table(
            "tenant",
            "lang",
            "items",
            "recent/prev",
            "verdicts",
            "top reason",
            "example",
            title=f"Contested-case clusters, last {days} days ({len(items)} items)",
        )
        for c in found:
            head = c.examples[0].preview if c.examples and c.examples[0].preview else ""
            listing.add_row(
                escape(c.tenant),
                escape(c.lang),
                str(c.size),
                f"{c.recent}/{c.previous} {c.trend}",
                ", ".join(f"{k} {v}" for k, v in c.verdicts.items()),
                escape(c.reasons[0][0]) if c.reasons else "–",
                escape(head[:60]),
            )
        out.print(listing)


@app.command("casebook")
def casebook_cmd(
    tenant: Annotated[
        str,
        typer.Option(help="The tenant whose casebook is refreshed.", callback=tenant_option),
    ],
    pack: Annotated[
        str | None, typer.Option(help="One policy pack's id (default: every pack).")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Decided in the last N days.")] = 90,
    per_pack: Annotated[int, typer.Option(min=1, max=50, help="Entries per pack.")] = PER_PACK,
) -> None:
    """Build or refresh the casebook (争议案例手册): per policy pack, the largest clusters of the
    tenant's contested decisions, each an entry with its decided label, the reviewers' reasons
    and its source items. Pinned and edited entries are never replaced, and an entry a senior
    retired is not proposed again. Prints one JSON line per pack."""
    settings = load_settings()
    now = datetime.now(UTC)
    for value in (tenant, pack):
        if value is not None and not value.isprintable():
            err.print("--tenant and --pack may not hold control characters")
            raise typer.Exit(2)

    async def refresh() -> list[dict[str, object]]:
        # lazy: asyncpg and the review store only for this command
        from guardstream.review.services.casebook import CasebookService
        from guardstream.review.store import ReviewStore

        store = await ReviewStore.open(settings)
        try:
            rows = await store.casebook.sources(tenant, pack, now - timedelta(days=days), 50_000)
            items = [
                CaseItem(
                    task_id=r.task_id,
                    post_id=r.post_id,
                    tenant=r.tenant,
                    pack=pack_id(r.policy),
                    lang=r.lang or "und",
                    vector=from_bytes(r.vector, UseEmbedder.dim),
                    decided_at=r.decided_at,
                    human_verdict=r.human_verdict,
                    model_verdict=r.model_verdict,
                    corrected=r.corrected,
                    categories=tuple(r.categories),
                    reason=r.reason,
                    preview=text_preview(r.head) if r.head is not None else None,
                )
                for r in rows
                if r.model == USE_MULTILINGUAL_V3  # vectors of another model do not meet these
            ]
            drafts = pick_cases(items, now, per_pack=per_pack)
            packs = sorted({d.pack for d in drafts} | ({pack} if pack else set()))
            service = CasebookService(store)
            done = []
            for name in packs:
                result = await service.refresh(tenant, name, drafts, per_pack)
                done.append(
                    {
                        "tenant": tenant,
                        "pack": name,
                        "inserted": result.inserted,
                        "updated": result.updated,
                        "retired": result.retired,
                        "kept": result.kept,
                    }
                )
            return done
        finally:
            await store.close()

    for line in asyncio.run(refresh()):
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
