"""`guardstream policy …`: change the pack registry directory safely, check packs, and
backtest a candidate against the reviewers' labels before it acts.

`apply` and `rollback` write the directory the processes load (`GUARDSTREAM_POLICY_DIR`, or
`--dir`) and keep every version under its `.history/` (`guardstream.policy.history`); the
processes take the change within `GUARDSTREAM_POLICY_POLL_S` without a restart. Exit codes:
0 done, 1 refused (every problem printed, nothing written), 2 invalid configuration.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape

from guardstream.cli.backtest_report import (
    ab_table,
    action_table,
    category_table,
    html_page,
    summary_table,
)
from guardstream.cli.common import (
    err,
    load_settings,
    out,
    shown,
    tenant_option,
    write_output,
)
from guardstream.cli.output import json_lines, table
from guardstream.policy import (
    PACKS_DIR,
    PolicyLoadError,
    load_packs,
    parse_pack_file,
    read_pack_text,
)
from guardstream.policy.ab_report import NoExperimentError, ab_report
from guardstream.policy.backtest import Case, PackGate, gate
from guardstream.policy.backtest import backtest as run_backtest
from guardstream.policy.history import Change, HistoryError, PackHistory, with_file
from guardstream.verdict.archive import Archive, ArchiveError

app = typer.Typer(
    no_args_is_help=True,
    help="Policy packs: apply, roll back, history, lint, backtest, A/B report.",
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The pack registry directory (default: GUARDSTREAM_POLICY_DIR).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object a line.")]
ArchiveOption = Annotated[
    Path | None,
    typer.Option(
        "--archive", help="Review archive (default: GUARDSTREAM_FEEDBACK_DIR).", show_default=False
    ),
]


def _registry_dir(given: Path | None) -> Path:
    directory = given or load_settings().policy.dir
    if directory is None:
        err.print(
            "[red]no pack registry directory:[/red] set GUARDSTREAM_POLICY_DIR or pass --dir "
            "(the packs shipped with guardstream are not changed in place)"
        )
        raise typer.Exit(2)
    if not directory.is_dir():
        err.print(f"[red]--dir: {escape(shown(directory))} is not a directory[/red]")
        raise typer.Exit(2)
    return directory


def _pack_text(path: Path) -> str:
    """A candidate pack file's text; `PolicyLoadError` naming why it has none (missing, a
    directory or device, over a megabyte, not UTF-8): refused, exit 1."""
    text, unreadable = read_pack_text(path)
    if unreadable is not None:
        raise PolicyLoadError([unreadable])
    return text


def _since_option(value: str) -> str:
    parse_since(value, datetime.now(UTC))  # a usage error naming --since, before any work
    return value


def _refused(exc: PolicyLoadError | HistoryError) -> typer.Exit:
    if isinstance(exc, PolicyLoadError):
        err.print(f"[red]refused, nothing written:[/red] {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            err.print(f"  {escape(str(problem))}", soft_wrap=True)
    else:
        err.print(f"[red]refused, nothing written:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(1)


def _done(change: Change, directory: Path) -> None:
    packs = ", ".join(f"{pack_id}@{version}" for pack_id, version in change.packs.items())
    out.print(
        f"{change.action} {escape(change.file)}: {escape(packs)} (change {change.seq} in "
        f"{escape(str(directory))}); running processes take it within GUARDSTREAM_POLICY_POLL_S",
        soft_wrap=True,
    )


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="A pack file (one or more packs, `---` apart).")],
    name: Annotated[
        str | None, typer.Option("--as", help="File name in the directory (default: FILE's).")
    ] = None,
    note: Annotated[str, typer.Option(help="Why, kept in the history.")] = "",
    gated: Annotated[
        bool,
        typer.Option(
            "--gate",
            help="Only if its backtest on the review archive passes the promotion gate.",
        ),
    ] = False,
    since: Annotated[
        str,
        typer.Option(help="--gate: reviews since (7d, 12h, a date).", callback=_since_option),
    ] = "14d",
    min_cases: Annotated[int, typer.Option(help="--gate: reviewed cases needed.", min=0)] = 30,
    archive_dir: ArchiveOption = None,
    directory: DirOption = None,
) -> None:
    """Check FILE with the whole directory as the processes would load it, keep it in the
    history, and put it in force (replacing the directory's file of the same name whole).

    With --gate, first backtest it against the packs in force on the reviews since --since:
    refused when there are fewer than --min-cases, or when it would raise the false-positive
    rate or lower the unsafe recall by more than 0.02 (the adapters' gate margins)."""
    where = _registry_dir(directory)
    target = name or file.name
    try:
        text = _pack_text(file)
        if gated:
            why = _gate(where, target, text, _reviewed_cases(archive_dir, since, None), min_cases)
            note = f"{note}; gate: {why}" if note else f"gate: {why}"
        change = PackHistory(where).apply(target, text, note=note)
    except (PolicyLoadError, HistoryError) as exc:
        raise _refused(exc) from None
    _done(change, where)


@app.command()
def rollback(
    pack_id: Annotated[str, typer.Argument(help="The pack to roll back.")],
    to: Annotated[
        str | None, typer.Option("--to", help="The version (default: the one before it).")
    ] = None,
    directory: DirOption = None,
) -> None:
    """Put the previous version of PACK_ID (or --to VERSION) back in force: its file is
    restored as that version's apply wrote it (packs sharing the file go back with it)."""
    where = _registry_dir(directory)
    try:
        change = PackHistory(where).rollback(pack_id, to)
    except (PolicyLoadError, HistoryError) as exc:
        raise _refused(exc) from None
    _done(change, where)


@app.command()
def history(
    pack_id: Annotated[str | None, typer.Argument(help="Only changes to this pack.")] = None,
    as_json: JsonOption = False,
    directory: DirOption = None,
) -> None:
    """Every change applied to the directory, oldest first."""
    try:
        changes = PackHistory(_registry_dir(directory)).changes(pack_id)
    except HistoryError as exc:
        err.print(f"[red]the history cannot be read:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        json_lines(
            {
                "seq": c.seq,
                "at": c.at.isoformat(),
                "action": c.action,
                "file": c.file,
                "packs": c.packs,
                "note": c.note,
            }
            for c in changes
        )
        return
    shown = table("#", "at (UTC)", "action", "file", "packs", "note")
    for c in changes:
        shown.add_row(
            str(c.seq),
            c.at.strftime("%Y-%m-%d %H:%M:%S"),
            c.action,
            escape(c.file),
            escape(", ".join(f"{k}@{v}" for k, v in c.packs.items())),
            escape(c.note),
        )
    out.print(shown)


@app.command()
def lint(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A pack directory or one file (default: GUARDSTREAM_POLICY_DIR, else the "
            "packs shipped with guardstream).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Load packs as the processes would and print every problem with its file and place.

    A single file is checked on its own (the directory-wide checks, such as one default pack
    and no tenant claimed twice, need the directory)."""
    where = path or load_settings().policy.dir or PACKS_DIR
    if where.is_dir():
        try:
            packs = load_packs(where).packs
        except PolicyLoadError as exc:
            raise _refused_lint(exc) from None
    else:
        text, unreadable = read_pack_text(where)
        if unreadable is not None:
            raise _refused_lint(PolicyLoadError([unreadable]))
        found, problems = parse_pack_file(shown(where.name), text)
        if problems:
            raise _refused_lint(PolicyLoadError(problems))
        packs = tuple(pack for _, pack in found)
    out.print(
        f"ok: {len(packs)} pack(s) in {escape(shown(where))}: "
        + escape(", ".join(p.ref for p in packs)),
        soft_wrap=True,
    )


def _refused_lint(exc: PolicyLoadError) -> typer.Exit:
    err.print(f"[red]{len(exc.problems)} problem(s):[/red]")
    for problem in exc.problems:
        # stdout too: an editor or CI step reads the problems from there, one a line.
        out.print(escape(str(problem)), soft_wrap=True, highlight=False)
    return typer.Exit(1)


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `30m` before `now`, or an ISO date / timestamp (UTC unless it says)."""
    amount, unit = text[:-1], text[-1:]
    if amount.isascii() and amount.isdigit() and unit in _UNITS:
        try:
            return now - timedelta(**{_UNITS[unit]: int(amount)})
        except (OverflowError, ValueError):  # before year 1, or past a C int
            raise typer.BadParameter(
                f"{text[:40]!r}: a span that long goes before year 1"
            ) from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text[:40]!r}: give a span such as 7d, 12h or 30m, or an ISO date"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@app.command()
def backtest(
    pack: Annotated[
        Path,
        typer.Option(
            "--pack",
            help="The candidate: a pack file (the directory with it in place of its "
            "namesake) or a whole pack directory.",
        ),
    ],
    since: Annotated[
        str,
        typer.Option(help="Reviews since: 7d, 12h, 30m or an ISO date.", callback=_since_option),
    ] = "7d",
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's reviews.", callback=tenant_option)
    ] = None,
    archive_dir: ArchiveOption = None,
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write an HTML report here.")
    ] = None,
) -> None:
    """Replay reviewed posts through the candidate and the packs in force: how many decisions
    change, per category and per action, with precision and recall against the reviewers.

    The model's archived verdicts are replayed, not scored again (rescoring through an
    adapter is not offered yet)."""
    if not pack.is_dir() and pack.suffix not in {".yaml", ".yml"}:
        # The loader reads only *.yaml / *.yml: any other name would change nothing.
        err.print(f"[red]--pack: {escape(shown(pack.name))} is not a .yaml or .yml file[/red]")
        raise typer.Exit(2)
    settings = load_settings()
    baseline_dir = directory or settings.policy.dir or PACKS_DIR
    try:
        baseline = load_packs(baseline_dir)
        if pack.is_dir():
            candidate = load_packs(pack)
        else:
            candidate = with_file(baseline_dir, pack.name, _pack_text(pack))
    except PolicyLoadError as exc:
        raise _refused_lint(exc) from None
    start = parse_since(since, datetime.now(UTC))
    cases = _reviewed_cases(archive_dir, since, tenant)
    report = run_backtest(cases, baseline, candidate).to_dict()
    if html is not None:
        write_output(
            html, html_page(report, candidate=shown(pack), since=start.isoformat()), "--html"
        )
    if as_json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return
    if not cases:
        err.print(f"no reviewed posts since {start.isoformat()}: nothing to compare")
    for listing in (summary_table(report), action_table(report), category_table(report)):
        out.print(listing)


@app.command("ab-report")
def ab_report_command(
    tenant: Annotated[
        str,
        typer.Option(help="The tenant whose experiment to report.", callback=tenant_option),
    ],
    since: Annotated[
        str,
        typer.Option(help="Reviews since: 7d, 12h, 30m or an ISO date.", callback=_since_option),
    ] = "7d",
    region: Annotated[
        str | None, typer.Option(help="The tenant's regional pack's experiment.")
    ] = None,
    archive_dir: ArchiveOption = None,
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
) -> None:
    """Compare the arms of a tenant's A/B experiment (its pack's `experiment:`) on the posts
    reviewers labelled since --since: block rate, review rate, false-positive rate and unsafe
    recall of the posts each arm's pack decided."""
    settings = load_settings()
    try:
        registry = load_packs(directory or settings.policy.dir or PACKS_DIR)
    except PolicyLoadError as exc:
        raise _refused_lint(exc) from None
    cases = _reviewed_cases(archive_dir, since, tenant)
    try:
        report = ab_report(cases, registry, tenant, region).to_dict()
    except NoExperimentError as exc:
        err.print(f"[red]no experiment:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return
    out.print(ab_table(report))


def _gate(where: Path, name: str, text: str, cases: list[Case], min_cases: int) -> str:
    """Why the candidate passes the promotion gate; `HistoryError` saying why not."""
    report = run_backtest(cases, load_packs(where), with_file(where, name, text))
    passed, why = gate(report, PackGate(min_cases=min_cases))
    if not passed:
        raise HistoryError(f"the promotion gate refused it: {why}")
    return why


def _reviewed_cases(archive_dir: Path | None, since: str, tenant: str | None) -> list[Case]:
    start = parse_since(since, datetime.now(UTC))
    where = archive_dir or load_settings().feedback.dir
    if where.exists() and not where.is_dir():
        err.print(f"[red]--archive: {escape(shown(where))} is not a directory[/red]")
        raise typer.Exit(2)
    try:
        samples = Archive(where).read(since=start)
    except ArchiveError as exc:
        err.print(f"[red]the review archive cannot be read:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    return [Case.from_sample(s) for s in samples if tenant is None or s.tenant == tenant]
