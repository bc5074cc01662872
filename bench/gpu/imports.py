"""Checks, without torch or a GPU, that the carried core set leaves out nothing vLLM imports
when a module on the scorer's path loads (`python bench/gpu/imports.py VLLM_WHEEL`).

Reads vLLM's sources straight from its wheel and follows module-level imports (not those
inside functions, `try:` blocks or `if TYPE_CHECKING:`) from the modules the scorer uses on a
GPU: the async engine, its core and executors, the GPU worker and model runner, Qwen3, and the
FlashAttention backend (FA3 on Hopper). It over-approximates (every `if` branch counts), so it
can only err on the side of a false alarm. Fails (exit 1) when an unguarded import on that path
reaches a distribution that `plan.EXCLUDED` leaves behind; prints the external modules reached.
"""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

# The scorer's path through vLLM on a GPU (guardstream.scorer.vllm_engine and what it starts).
STARTS = (
    "vllm",
    "vllm.v1.engine.async_llm",
    "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.gpu_worker",
    "vllm.v1.worker.gpu_model_runner",
    "vllm.model_executor.models.qwen3",
    "vllm.v1.attention.backends.flash_attn",
    "vllm.platforms.cuda",
)
# Import names of the distributions plan.EXCLUDED leaves behind.
EXCLUDED_MODULES = {
    "PyNvVideoCodec": "pynvvideocodec",
    "torchcodec": "torchcodec",
    "tilelang": "tilelang",
    "z3": "z3-solver",
    "tokenspeed_mla": "tokenspeed-mla",
    "tokenspeed_triton": "tokenspeed-triton",
    "humming": "humming-kernels",
    "quack": "quack-kernels",
    "cutlass": "nvidia-cutlass-dsl",
    "cuda": "cuda-tile (cuda.tile)",  # cuda.bindings is on the image; only cuda.tile is left
}


class Sources:
    def __init__(self, wheel: Path) -> None:
        self._zip = zipfile.ZipFile(wheel)
        self._names = set(self._zip.namelist())

    def find(self, module: str) -> tuple[str, bool] | None:
        """(source, is_package) of a vllm module, or None."""
        base = module.replace(".", "/")
        for path, package in ((f"{base}.py", False), (f"{base}/__init__.py", True)):
            if path in self._names:
                return self._zip.read(path).decode("utf-8", "replace"), package
        return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(tree: ast.Module, module: str, package: bool) -> list[tuple[str, bool, bool]]:
    """(imported module, guarded by try, maybe-a-name-not-a-module) run at import time."""
    found: list[tuple[str, bool, bool]] = []

    def visit(body: list[ast.stmt], guarded: bool) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, guarded, False) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    parts = module.split(".") if package else module.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    target = ".".join(parts + ([node.module] if node.module else []))
                found.append((target, guarded, False))
                found.extend((f"{target}.{alias.name}", guarded, True) for alias in node.names)
            elif isinstance(node, ast.If):
                if not _type_checking(node.test):
                    visit(node.body, guarded)
                    visit(node.orelse, guarded)
            elif isinstance(node, ast.Try):
                visit(node.body, True)
                for handler in node.handlers:
                    visit(handler.body, True)
                visit(node.orelse, guarded)
                visit(node.finalbody, guarded)
            elif isinstance(node, ast.With):
                visit(node.body, guarded)

    visit(tree.body, False)
    return found


def closure(sources: Sources) -> dict[str, tuple[bool, str]]:
    """External top-level module → (reached unguarded, first vllm module importing it)."""
    seen: set[str] = set()
    external: dict[str, tuple[bool, str]] = {}
    stack = list(STARTS)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parents load first
        found = sources.find(name)
        if found is None:
            continue
        try:
            tree = ast.parse(found[0])
        except SyntaxError:
            continue
        for target, guarded, maybe_name in module_imports(tree, name, found[1]):
            top = target.split(".")[0]
            if not top or top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top == "vllm":
                if not maybe_name or sources.find(target) is not None:
                    stack.append(target)
            elif not maybe_name:
                if top == "cuda" and not target.startswith("cuda.tile"):
                    continue
                was = external.get(top)
                unguarded = not guarded or (was is not None and was[0])
                external[top] = (unguarded, was[1] if was else name)
    return external


def main(argv: list[str]) -> int:
    external = closure(Sources(Path(argv[1])))
    bad = []
    for top, (unguarded, via) in sorted(external.items()):
        print(f"{top:24s} {'unguarded' if unguarded else 'in try  '}  first from {via}")
        if unguarded and top in EXCLUDED_MODULES:
            bad.append(f"{EXCLUDED_MODULES[top]} (import {top}, from {via})")
    if bad:
        print(
            "imports.py: the core set leaves out what vLLM imports on the scorer's path: "
            + "; ".join(bad)
            + " — run prepare.sh with GPU_TIER=full",
            file=sys.stderr,
        )
        return 1
    print("imports.py: nothing the core set leaves out is imported unguarded on the scorer's path")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
