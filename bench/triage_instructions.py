"""Triage's per-post cost in instructions, not seconds: the same parts as `bench/triage_parts.py`,
each counted by valgrind's callgrind, so two builds compare exactly on a loaded machine.

Timings on a shared 2-core machine move by 2-4× with what else runs; instruction counts do
not (the same binary, inputs and environment give the same count). Each part runs once inside
`functools.reduce`, and callgrind collects only inside that C function
(`--toggle-collect=functools_reduce`), so corpus building, imports and the warm-up run are not
counted. Parts: `triage` (parse, normalise, policy, content key), `triage-bare` (the same posts
without `lang`, which triage then detects), `decide` (a cache hit's decision) and `send` (the
decision through the emitter and flushed, no broker). The totals add `triage` (or, for posts
without `lang`, `triage-bare`) to `decide` and `send`: a cache hit's whole path in triage's
code, without the broker client and Redis calls, so a ratio of totals is an upper bound on
what a change does to the whole process's CPU per post.

Several checkouts (`--tree`, the first is the baseline) are measured in one run, part by
part, and the ratio to the baseline printed; e.g. before and after a change:

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/triage_instructions.py --tree /tmp/base --tree . [--posts 1000]

Needs valgrind (Debian: apt-get install valgrind) and a Python binary, not a shell shim (the
virtualenv's `python` is one). About a minute per part and tree at 1,000 posts.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

PARTS = ("triage", "triage-bare", "decide", "send")


def run_part(part: str, posts: int) -> None:
    """Inside valgrind: build the batch, warm the part once, then run it once in reduce."""
    import bench.triage_parts as tp
    from bench.pipeline import Corpus, encode, standin_verdict

    tp.steady_malloc()
    raws = [sent.value for sent in encode(Corpus(7, gap=50).take(posts), "mb")]
    triager = tp.Triager(
        max_text_chars=10_000,
        model="tiny",
        adapter_for=lambda _t: None,
        policies=tp.load_registry(None),
    )
    bare = []
    for raw in raws:
        post = orjson.loads(raw)
        post.pop("lang", None)
        bare.append(orjson.dumps(post))
    items = [triager.triage(raw) for raw in raws]
    verdicts = [standin_verdict(item.content_key, "tiny") for item in items]
    decisions = tp.decisions_of(items, verdicts)
    settings = tp.Settings()
    tp.telemetry.setup(settings, "triage")
    work: Callable[[], object] = {
        "triage": lambda: [triager.triage(raw) for raw in raws],
        "triage-bare": lambda: [triager.triage(raw) for raw in bare],
        "decide": lambda: tp.decisions_of(items, verdicts),
        "send": lambda: tp.send_decisions(settings, decisions),
    }[part]
    work()
    # As the processes settle the collector after start-up (`runtime.process`): otherwise a
    # full collection inside the part walks every module loaded, and the count depends on
    # what else the checkout imports.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    functools.reduce(lambda _a, _b: work(), [0, 1], 0)  # two elements: one call


def count(tree: Path, part: str, posts: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    env = {**os.environ, "PYTHONPATH": f"{tree / 'services'}:{tree}", "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            "--inside",
            part,
            "--posts",
            str(posts),
        ],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{tree} {part}: callgrind failed\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--tree", type=Path, action="append", help="a checkout (repeatable)")
    parser.add_argument("--part", choices=PARTS, action="append")
    parser.add_argument("--inside", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        run_part(args.inside, args.posts)
        return 0
    trees = [tree.resolve() for tree in args.tree or [Path(__file__).parents[1]]]
    parts = args.part or list(PARTS)
    per_post: dict[str, dict[str, float]] = {}
    for part in parts:
        for tree in trees:
            n = count(tree, part, args.posts) / args.posts
            per_post.setdefault(str(tree), {})[part] = n
            base = per_post[str(trees[0])][part]
            print(f"{part:8s} {n:12,.0f} instructions/post  ×{n / base:.3f}  {tree}", flush=True)
    totals: dict[str, dict[str, float]] = {}
    for tree, got in per_post.items():
        rest = got.get("decide", 0.0) + got.get("send", 0.0)
        for kind, part in (("with lang", "triage"), ("without lang", "triage-bare")):
            if part in got:
                totals.setdefault(kind, {})[tree] = got[part] + rest
    ratios: dict[str, dict[str, float]] = {}
    for kind, by_tree in totals.items():
        base_total = by_tree[str(trees[0])]
        for tree, total in by_tree.items():
            ratios.setdefault(kind, {})[tree] = round(total / base_total, 4)
            print(
                f"total, posts {kind:12s} {total:12,.0f} instructions/post  "
                f"×{total / base_total:.3f}  {tree}"
            )
    summary = {
        "bench": "triage_instructions",
        "posts": args.posts,
        "per_post": per_post,
        "ratio_to_first": ratios,
    }
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
