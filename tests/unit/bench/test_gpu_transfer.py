"""bench/gpu: the carry plan for vLLM on the GPU machine. No call may carry more than the
device tool's 64 MiB with the repository; the parts join back to the very bytes (sha256), and a
lost or damaged part names the call to send again; the import check fails when vLLM's serving
path imports a dependency the core set leaves behind."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

GPU = Path(__file__).parents[3] / "bench" / "gpu"


def load(name: str):  # bench/gpu is scripts, not a package
    spec = importlib.util.spec_from_file_location(f"bench_gpu_{name}", GPU / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


plan = load("plan")
imports = load("imports")


@given(
    budget=st.integers(1, 10_000),
    sizes=st.lists(st.integers(1, 10_000), max_size=60),
)
def test_pack_never_overfills_a_call_and_places_every_part_once(
    budget: int, sizes: list[int]
) -> None:
    parts = [(f"p{i:03d}", size) for i, size in enumerate(sizes)]
    if any(size > budget for size in sizes):
        with pytest.raises(ValueError, match="exceeds one call's budget"):
            plan.pack(parts, budget)
        return
    calls = plan.pack(parts, budget)
    by_name = dict(parts)
    assert all(sum(by_name[n] for n in call) <= budget for call in calls)
    assert sorted(n for call in calls for n in call) == sorted(by_name)
    # First fit, largest first: never more than twice the calls the bytes need, plus one.
    assert len(calls) <= 2 * (sum(sizes) // budget) + 1


@settings(max_examples=25, deadline=None)
@given(
    blobs=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6),
    part_bytes=st.integers(100, 1500),
)
def test_split_join_round_trip_and_call_limit(
    tmp_path_factory: pytest.TempPathFactory, blobs: list[bytes], part_bytes: int
) -> None:
    root = tmp_path_factory.mktemp("gpu")
    wheels = root / "wheels"
    wheels.mkdir()
    for index, blob in enumerate(blobs):
        (wheels / f"pkg{index}-1.0-py3-none-any.whl").write_bytes(blob)
    limit, repo, margin = 4000, 700, 100
    manifest = plan.split(wheels, root / "parts", repo, part_bytes, limit, margin)
    for call in manifest["calls"]:
        carried = sum(
            p.stat().st_size for p in (root / "parts" / f"call{call['call']:02d}").iterdir()
        )
        assert carried == call["bytes"] and repo + carried <= limit - margin
    stage = root / "stage"
    stage.mkdir()
    for folder in (root / "parts").iterdir():
        for part in folder.iterdir():
            (stage / part.name).write_bytes(part.read_bytes())
    assert plan.join(manifest, stage, root / "out") == []
    for index, blob in enumerate(blobs):
        assert (root / "out" / f"pkg{index}-1.0-py3-none-any.whl").read_bytes() == blob


def test_join_names_the_call_of_a_lost_or_damaged_part(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1-py3-none-any.whl").write_bytes(b"a" * 2500)
    (wheels / "b-1-py3-none-any.whl").write_bytes(b"b" * 900)
    manifest = plan.split(wheels, tmp_path / "parts", 0, 1000, 1100, 0)
    stage = tmp_path / "stage"
    stage.mkdir()
    for part in (tmp_path / "parts").rglob("*.part*"):
        (stage / part.name).write_bytes(part.read_bytes())
    where = {p: c["call"] for c in manifest["calls"] for p in c["parts"]}
    (stage / "a-1-py3-none-any.whl.part001").unlink()
    damaged = stage / "b-1-py3-none-any.whl.part000"
    damaged.write_bytes(b"B" + damaged.read_bytes()[1:])
    problems = plan.join(manifest, stage, tmp_path / "out")
    assert problems == [
        f"a-1-py3-none-any.whl: parts missing, re-send call(s) "
        f"[{where['a-1-py3-none-any.whl.part001']}]",
        f"b-1-py3-none-any.whl: sha256 mismatch, re-send call(s) "
        f"[{where['b-1-py3-none-any.whl.part000']}]",
    ]
    assert not (tmp_path / "out" / "b-1-py3-none-any.whl").exists()


def fake_vllm(path: Path, body: str) -> Path:
    wheel = path / "vllm-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("vllm/__init__.py", "from vllm.v1.engine import async_llm\n")
        archive.writestr("vllm/v1/__init__.py", "")
        archive.writestr("vllm/v1/engine/__init__.py", "")
        archive.writestr("vllm/v1/engine/async_llm.py", body)
    return wheel


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("import numpy\nfrom .core import x\n", 0),
        ("try:\n    import tilelang\nexcept ImportError:\n    pass\n", 0),
        ("def f():\n    import tilelang\n", 0),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torchcodec\n", 0),
        ("import cuda.bindings\n", 0),
        ("import tilelang.language as T\n", 1),
        ("if True:\n    from quack import gemm\n", 1),
        ("from cuda.tile import kernel\n", 1),
    ],
)
def test_import_check_fails_only_on_an_unguarded_left_out_import(
    tmp_path: Path, body: str, code: int
) -> None:
    assert imports.main(["imports.py", str(fake_vllm(tmp_path, body))]) == code


def test_excluded_modules_cover_every_excluded_distribution() -> None:
    named = {d.split(" ")[0] for d in imports.EXCLUDED_MODULES.values()}
    lib_parts = {
        "nvidia-cutlass-dsl-libs-base",
        "nvidia-cutlass-dsl-libs-core",
        "nvidia-cutlass-dsl-libs-cu12",
        "nvidia-cutlass-dsl-libs-cu13",
    }
    compilers = {
        "nvidia-cuda-nvcc",
        "nvidia-cuda-crt",
        "nvidia-nvvm",
        "nvidia-cuda-cccl",
        "nvidia-cuda-nvdisasm",
    }  # no import names: libraries and tools
    assert set(plan.EXCLUDED) - lib_parts - compilers == named


def test_measure_runs_the_issue_s_configurations_cheapest_first(tmp_path: Path) -> None:
    """The measuring call's commands (DRY_RUN prints them): vLLM engine, each random shape,
    0.6B first, 300-token posts, several in-flight limits, the checkpoint built beforehand."""
    done = subprocess.run(
        ["bash", str(GPU / "run.sh"), "measure"],
        env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = (done.stdout + done.stderr).splitlines()
    scorer = [line for line in lines if line.startswith("+ ") and "bench/scorer.py" in line]
    builds = [line for line in lines if line.startswith("+ ") and "random_qwen3.py" in line]
    sizes = [re.search(r"--model random-(\S+)", line).group(1) for line in scorer]  # type: ignore[union-attr]
    assert sizes == ["0.6B", "4B", "8B"]
    assert [line.split("random_qwen3.py ")[1].split()[0] for line in builds] == sizes
    for line in scorer:
        assert "--engine vllm" in line and "--post-tokens 300" in line
        assert len(re.search(r"--in-flight (\S+)", line).group(1).split(",")) >= 3  # type: ignore[union-attr]
