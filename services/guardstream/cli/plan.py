"""`guardstream plan`: size a deployment for a volume from measured unit costs (no GPU, no
broker: arithmetic over `bench/results/`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import orjson
import typer
import yaml  # type: ignore[import-untyped]
from rich.markup import escape
from rich.table import Table

from guardstream.cli.common import err, out
from guardstream.devtools.plan import (
    Inputs,
    Plan,
    PlanError,
    helm_values,
    load_costs,
    make_plan,
    second_tier_values,
)

Output = Literal["table", "json", "helm"]


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    raise AssertionError("unreachable")


def _table(plan: Plan) -> None:
    i = plan.inputs
    summary = Table(title="capacity plan")
    for name in ("what", "guardstream", "naive design"):
        summary.add_column(name, overflow="fold")
    summary.add_row(
        "posts/day (peak posts/s)", f"{i.posts_per_day:,.0f} ({plan.peak_posts_per_s:,.0f})", "same"
    )
    summary.add_row(
        "scored by a model",
        f"{plan.scored_share:.0%} of posts",
        "100% (no cache, no near-duplicates)",
    )
    for tier in plan.tiers:
        summary.add_row(
            f"GPUs ({i.gpu}) for {tier.model}, {i.mode}",
            f"{tier.gpus} ({tier.posts_per_s:,.0f} posts/s at {tier.gpu_posts_per_s.value:g}/GPU)",
            "",
        )
    summary.add_row(
        f"GPUs ({i.gpu}) in all",
        str(plan.gpus),
        f"{plan.naive_gpus} ({plan.naive_tier.model}, plain, "
        f"{plan.naive_tier.gpu_posts_per_s.value:g}/GPU)",
    )
    summary.add_row("GPU ratio naive / guardstream", f"{plan.gpu_ratio:.1f}×", "")
    for tier in (*plan.tiers, plan.naive_tier):
        m = tier.memory
        summary.add_row(
            f"one {i.gpu} with {tier.model}",
            f"{m.weight_bytes / 1e9:.1f} GB weights, KV cache for {m.kv_tokens:,} tokens: "
            f"max_model_len {m.max_model_len:,} ({m.full_contexts:.0f} at once), "
            f"{m.posts_in_flight:,} posts in flight",
            "" if tier is not plan.naive_tier else "(the naive design's model)",
        )
    summary.add_row(
        "triage replicas (cores)", f"{plan.triage_replicas} ({plan.triage_cores:.1f})", ""
    )
    summary.add_row(
        f"API replicas (cores) for {i.api_share:.0%} of posts",
        "not planned"
        if plan.api_replicas is None or plan.api_cores is None
        else f"{plan.api_replicas} ({plan.api_cores:.1f})",
        "",
    )
    summary.add_row(
        "contested / day → reviewers on shift at peak (headcount)",
        f"{plan.contested_per_day:,.0f} → {plan.reviewers_on_shift} ({plan.reviewer_headcount})",
        "",
    )
    for name, size in plan.redis_bytes.items():
        summary.add_row(f"Redis: {name.replace('_', ' ')}", _bytes(size), "")
    summary.add_row(
        f"PostgreSQL: review tasks kept {i.review_retention_days:g} days",
        _bytes(plan.postgres_bytes),
        "",
    )
    for topic, count in plan.partitions.items():
        summary.add_row(
            f"partitions: {topic}",
            f"{count} ({plan.msgs_per_partition[topic]:,.0f} msgs/s each at peak)",
            "",
        )
    out.print(summary)
    costs = Table(title="measured unit costs")
    for name in ("unit cost", "value", "from (bench/results/)"):
        costs.add_column(name, overflow="fold")
    for name, cost in plan.costs.every().items():
        costs.add_row(
            escape(name), f"{cost.value:g} {cost.unit}", escape(f"{cost.source}: {cost.detail}")
        )
    out.print(costs)
    for note in plan.notes:
        out.print(f"[yellow]note:[/yellow] {escape(note)}")


def plan(
    posts_per_day: Annotated[float, typer.Option(help="Posts per day, e.g. 1e9.")],
    peak_to_mean: Annotated[float, typer.Option(help="Peak hour rate over the daily mean.")] = 3.0,
    duplicate_share: Annotated[float, typer.Option(help="Exact repeats (cache hits).")] = 0.30,
    near_duplicate_share: Annotated[float, typer.Option(help="Trivial variants.")] = 0.05,
    contested_share: Annotated[
        float, typer.Option(help="Of the posts a model scores, the share sent to review.")
    ] = 0.03,
    model: Annotated[str, typer.Option(help="First tier: 0.6B, 4B or 8B.")] = "0.6B",
    escalate_to: Annotated[
        str | None, typer.Option(help="Cascade second tier (4B or 8B); none by default.")
    ] = None,
    escalation_share: Annotated[
        float, typer.Option(help="Of the first tier's posts, the share escalated.")
    ] = 0.0,
    gpu: Annotated[str, typer.Option(help="GPU kind with measured results, e.g. h200.")] = "h200",
    mode: Annotated[str, typer.Option(help="Scoring mode: two_phase or plain.")] = "two_phase",
    gpu_utilisation: Annotated[float, typer.Option(help="Planned share of a GPU.")] = 0.7,
    api_share: Annotated[
        float, typer.Option(help="Of the posts, the share sent through the moderation API.")
    ] = 0.0,
    minutes_per_review: Annotated[float, typer.Option(help="A reviewer's minutes per item.")] = 2.0,
    shift_hours: Annotated[float, typer.Option(help="Hours per reviewer shift.")] = 8.0,
    sla_hours: Annotated[float, typer.Option(help="Review SLA in hours.")] = 2.0,
    cache_days: Annotated[float, typer.Option(help="Verdict cache retention (days).")] = 7.0,
    journal_days: Annotated[float, typer.Option(help="Decision journal retention (days).")] = 7.0,
    review_retention_days: Annotated[
        float, typer.Option(help="Days review tasks and texts are kept.")
    ] = 30.0,
    redis_headroom: Annotated[
        float, typer.Option(help="Redis memory over its data (fragmentation, buffers).")
    ] = 1.5,
    results: Annotated[
        Path | None, typer.Option(help="Results directory (default: the checkout's bench/results).")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="table, json or helm (a values overlay).")
    ] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --output json.")] = False,
) -> None:
    """Size a deployment: partitions, replicas, GPUs per tier, Redis and PostgreSQL, reviewers.

    Every unit cost is read from a benchmark result under bench/results/ and named with its
    file; a naive design's GPUs (no cache, plain generation, the largest model) are printed
    beside from the same costs. Exit 2 on inputs or results that cannot give a plan."""
    if mode not in ("plain", "two_phase"):
        err.print(f"[red]--mode {mode!r}:[/red] plain or two_phase")
        raise typer.Exit(2)
    chosen = "json" if as_json else output
    if chosen not in ("table", "json", "helm"):
        err.print(f"[red]--output {chosen!r}:[/red] table, json or helm")
        raise typer.Exit(2)
    inputs = Inputs(
        posts_per_day=posts_per_day,
        peak_to_mean=peak_to_mean,
        duplicate_share=duplicate_share,
        near_duplicate_share=near_duplicate_share,
        contested_share=contested_share,
        model=model,
        escalate_to=escalate_to,
        escalation_share=escalation_share,
        gpu=gpu.lower(),
        mode="plain" if mode == "plain" else "two_phase",
        gpu_utilisation=gpu_utilisation,
        api_share=api_share,
        minutes_per_review=minutes_per_review,
        shift_hours=shift_hours,
        sla_hours=sla_hours,
        cache_days=cache_days,
        journal_days=journal_days,
        review_retention_days=review_retention_days,
        redis_headroom=redis_headroom,
    )
    try:
        made = make_plan(inputs, load_costs(results))
    except PlanError as exc:
        err.print(f"[red]cannot plan:[/red] {exc}")
        raise typer.Exit(2) from None
    if chosen == "json":
        sys.stdout.write(orjson.dumps(made.as_dict()).decode() + "\n")
    elif chosen == "helm":
        sys.stdout.write("# guardstream plan: values overlay for deploy/helm/guardstream\n")
        sys.stdout.write(yaml.safe_dump(helm_values(made), sort_keys=False))
        second = second_tier_values(made)
        if second is not None:
            sys.stdout.write("---\n# the cascade's second tier: a second release of the chart\n")
            sys.stdout.write(yaml.safe_dump(second, sort_keys=False))
    else:
        _table(made)
