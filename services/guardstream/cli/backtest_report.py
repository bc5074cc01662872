"""How `guardstream policy backtest` shows its report: rich tables on the terminal, and one
self-contained HTML page with the confusion matrices drawn as inline SVG.

The plot is a grid of shaded cells with their counts: a few dozen lines of SVG written here
rather than a plotting library (matplotlib and its five dependencies) for one chart; the page
opens offline and diffs as text. Every string from the data is escaped: pack refs and
category names come from files and model output.
"""

from __future__ import annotations

from html import escape
from typing import Any

from rich.table import Table

from guardstream.cli.output import table

_SIDES = ("baseline", "candidate")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _pair(figures: dict[str, Any], *path: str) -> tuple[Any, Any]:
    found = []
    for side in _SIDES:
        value: Any = figures[side]
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        found.append(value)
    return found[0], found[1]


def summary_table(report: dict[str, Any]) -> Table:
    shown = table("", "baseline", "candidate", title="Backtest: all reviewed cases")
    shown.add_row("cases", str(report["cases"]), str(report["cases"]))
    shown.add_row("decisions that change", "", str(report["changed"]))
    for name, path in (
        ("unsafe recall (blocked / human unsafe)", ("unsafe_recall",)),
        ("false-positive rate (blocked / human safe)", ("false_positive_rate",)),
        ("review rate", ("review_rate",)),
        ("allow precision (human safe)", ("precision", "allow")),
        ("block precision (human unsafe)", ("precision", "block")),
    ):
        before, after = _pair(report, *path)
        shown.add_row(name, percent(before), percent(after))
    return shown


def action_table(report: dict[str, Any]) -> Table:
    shown = table("action", "baseline", "candidate", "moved in", "moved out", title="Per action")
    actions = list(report["candidate"]["actions"])
    for action in report["baseline"]["actions"]:
        if action not in actions:
            actions.append(action)
    for action in actions:
        before, after = _pair(report, "actions", action)
        moved_in = sum(m["cases"] for m in report["moves"] if m["to"] == action)
        moved_out = sum(m["cases"] for m in report["moves"] if m["from"] == action)
        shown.add_row(action, str(before or 0), str(after or 0), str(moved_in), str(moved_out))
    return shown


def category_table(report: dict[str, Any]) -> Table:
    shown = table(
        "model category",
        "cases",
        "changed",
        "block precision",
        "unsafe recall",
        "false positives",
        title="Per category",
    )
    for name, group in report["by_category"].items():
        row = [name, str(group["cases"]), str(group["changed"])]
        for path in (("precision", "block"), ("unsafe_recall",), ("false_positive_rate",)):
            before, after = _pair(group, *path)
            row.append(f"{percent(before)} → {percent(after)}")
        shown.add_row(*row)
    return shown


def confusion_svg(confusion: dict[str, dict[str, int]], title: str) -> str:
    """Human verdict (rows) × action (columns), cells shaded by their share of the row."""
    rows = list(confusion)
    columns = list(next(iter(confusion.values()), {}))
    cell, left, top = 72, 120, 56
    width, height = left + cell * len(columns) + 10, top + cell * len(rows) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="13">',
        f'<text x="{left}" y="18" font-weight="bold">{escape(title)}</text>',
        f'<text x="{left}" y="40" fill="#555">action →</text>',
    ]
    for j, action in enumerate(columns):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x}" y="{top - 4}" text-anchor="middle">{escape(action)}</text>')
    for i, human in enumerate(rows):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 8}" y="{y + cell / 2 + 4}" text-anchor="end">human '
            f"{escape(human)}</text>"
        )
        row_total = sum(confusion[human].values()) or 1
        for j, action in enumerate(columns):
            count = confusion[human][action]
            shade = round(235 - 180 * count / row_total)
            ink = "#fff" if shade < 140 else "#000"
            x = left + j * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="rgb({shade},{shade},255)"><title>human {escape(human)}, '
                f"{escape(action)}: {count}</title></rect>"
            )
            parts.append(
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 5}" text-anchor="middle" '
                f'fill="{ink}">{count}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def html_page(report: dict[str, Any], *, candidate: str, since: str) -> str:
    def rows(names: list[tuple[str, tuple[str, ...]]]) -> str:
        out = []
        for name, path in names:
            before, after = _pair(report, *path)
            out.append(
                f"<tr><th>{escape(name)}</th><td>{percent(before)}</td>"
                f"<td>{percent(after)}</td></tr>"
            )
        return "".join(out)

    categories = "".join(
        f"<tr><th>{escape(name)}</th><td>{g['cases']}</td><td>{g['changed']}</td>"
        + "".join(
            f"<td>{percent(_pair(g, *p)[0])} → {percent(_pair(g, *p)[1])}</td>"
            for p in (("precision", "block"), ("unsafe_recall",), ("false_positive_rate",))
        )
        + "</tr>"
        for name, g in report["by_category"].items()
    )
    moves = "".join(
        f"<tr><td>{escape(m['from'])}</td><td>{escape(m['to'])}</td><td>{m['cases']}</td></tr>"
        for m in report["moves"]
    )
    plots = "".join(
        confusion_svg(report[side]["confusion"], f"{side}: human verdict × action")
        for side in _SIDES
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Policy backtest</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;
text-align:left}}svg{{margin-right:2em}}</style></head><body>
<h1>Policy backtest</h1>
<p>Candidate <code>{escape(candidate)}</code> against the packs in force, on
{report["cases"]} reviewed cases since {escape(since)}: <strong>{report["changed"]}</strong>
decisions change.</p>
<p>Baseline packs: {escape(", ".join(report["baseline_packs"]))}<br>
Candidate packs: {escape(", ".join(report["candidate_packs"]))}</p>
<h2>Against the human labels</h2>
<table><tr><th></th><th>baseline</th><th>candidate</th></tr>{
        rows(
            [
                ("unsafe recall", ("unsafe_recall",)),
                ("false-positive rate", ("false_positive_rate",)),
                ("review rate", ("review_rate",)),
                ("allow precision", ("precision", "allow")),
                ("block precision", ("precision", "block")),
            ]
        )
    }</table>
<h2>Confusion matrices</h2><div>{plots}</div>
<h2>Decisions that change</h2>
<table><tr><th>from</th><th>to</th><th>cases</th></tr>{moves}</table>
<h2>Per model category</h2>
<table><tr><th>category</th><th>cases</th><th>changed</th><th>block precision</th>
<th>unsafe recall</th><th>false positives</th></tr>{categories}</table>
</body></html>
"""


def ab_table(report: dict[str, Any]) -> Table:
    """`guardstream policy ab-report`: the arms side by side."""
    arms = report["arms"]
    shown = table(
        "",
        f"control ({report['control_pack']})",
        f"candidate ({report['candidate_pack']}, {report['percent']:g}%)",
        title=f"A/B: tenant {report['tenant']}, reviewed posts per arm",
    )
    shown.add_row("cases", str(arms["control"]["cases"]), str(arms["candidate"]["cases"]))
    for name, key in (
        ("block rate", "block_rate"),
        ("review rate", "review_rate"),
        ("false-positive rate", "false_positive_rate"),
        ("unsafe recall", "unsafe_recall"),
    ):
        shown.add_row(name, percent(arms["control"][key]), percent(arms["candidate"][key]))
    return shown
