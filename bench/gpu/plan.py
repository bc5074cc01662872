"""The carry plan for vLLM on the GPU machine: which wheels, which parts, which device call.

Used by `bench/gpu/prepare.sh` (here, with network) and by its test. Three steps:

* `missing REPORT IMAGE_LIST OUT` — from pip's `--dry-run --report` of vLLM's whole dependency
  tree (Python 3.12, manylinux x86_64), the distributions the GPU image does not have
  (`image-packages.txt`), one version each, minus `EXCLUDED` unless `GPU_TIER=full`: one
  `name==version` a line.
* `split WHEELS PARTS_DIR MANIFEST` — every downloaded wheel cut into parts of at most
  `PART_BYTES`, parts packed (largest first) into device calls of at most the call budget
  (64 MiB minus the repository's tracked bytes minus a margin); the manifest records each
  original file's sha256 and size, its parts in order, and each call's parts.
* `join MANIFEST STAGE SITE_WHEELS` — (on the GPU machine) the parts joined back, each file's
  sha256 checked; exits non-zero naming the call to re-send when a part is missing.

Only the standard library: it runs with the GPU machine's bare python3 too.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

MIB = 1024 * 1024
CALL_LIMIT = 64 * MIB  # the device tool's working-tree limit per call
MARGIN = 2 * MIB  # room for manifest copies and files that change between prepare and the calls
PART_BYTES = 57 * MIB  # a part: under 60 MB (decimal)

# Dependencies vLLM lists that serving a Qwen3 text model with the default attention backend on
# Hopper does not load (media decoding, MLA / DeepSeek kernels, TileLang and CuTe-DSL kernel
# compilers and the CUDA compiler wheels they pull in; the image has nvcc of its own). They are
# most of the bytes; `GPU_TIER=full` carries them anyway, if the core set fails to import.
EXCLUDED = {
    "pynvvideocodec": "video decoding (multimodal inputs)",
    "torchcodec": "audio/video decoding (multimodal inputs)",
    "tilelang": "TileLang kernels (sparse/MLA attention, some MoE)",
    "z3-solver": "TileLang's solver",
    "tokenspeed-mla": "MLA attention (DeepSeek-style models)",
    "tokenspeed-triton": "tokenspeed-mla's Triton fork",
    "humming-kernels": "quantised MoE kernels",
    "quack-kernels": "CuTe-DSL kernels (Blackwell paths)",
    "nvidia-cutlass-dsl": "CuTe DSL (FlashAttention 4 on Blackwell)",
    "nvidia-cutlass-dsl-libs-base": "CuTe DSL",
    "nvidia-cutlass-dsl-libs-core": "CuTe DSL",
    "nvidia-cutlass-dsl-libs-cu12": "CuTe DSL, CUDA 12 build",
    "nvidia-cutlass-dsl-libs-cu13": "CuTe DSL, CUDA 13 build",
    "nvidia-cuda-nvcc": "CUDA compiler wheel (the image has nvcc)",
    "nvidia-cuda-crt": "CUDA compiler wheel",
    "nvidia-nvvm": "CUDA compiler wheel",
    "nvidia-cuda-cccl": "CUDA headers wheel",
    "nvidia-cuda-nvdisasm": "CUDA tools wheel",
    "cuda-tile": "CUDA tile compiler",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    return {norm(x) for x in lines if x.strip() and not x.startswith("#")}


def on_image(report: dict, present: set[str]) -> list[tuple[str, str]]:
    """`(name, version)` of each distribution in pip's report that the image has: what
    prepare.sh's SIMULATE_IMAGE=1 downloads to stand in for the image here."""
    return sorted(
        {
            (norm(i["metadata"]["name"]), i["metadata"]["version"])
            for i in report["install"]
            if norm(i["metadata"]["name"]) in present
        }
    )


def missing(report: dict, present: set[str], full: bool) -> list[tuple[str, str]]:
    """`(name, version)` of each distribution in pip's report the image lacks, sorted."""
    chosen: dict[str, str] = {}
    for item in report["install"]:
        name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
        if name in present or (not full and name in EXCLUDED):
            continue
        if chosen.setdefault(name, version) != version:
            raise SystemExit(f"two versions of {name}: {chosen[name]} and {version}")
        chosen[name] = version
    return sorted(chosen.items())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(parts: list[tuple[str, int]], budget: int) -> list[list[str]]:
    """Parts (name, bytes) into calls of at most `budget` bytes each, first fit, largest
    first; each call's parts in name order. A part larger than `budget` is an error."""
    calls: list[tuple[int, list[str]]] = []
    for name, size in sorted(parts, key=lambda p: (-p[1], p[0])):
        if size > budget:
            raise ValueError(f"part {name} ({size} bytes) exceeds one call's budget {budget}")
        for index, (used, names) in enumerate(calls):
            if used + size <= budget:
                calls[index] = (used + size, [*names, name])
                break
        else:
            calls.append((size, [name]))
    return [sorted(names) for _, names in calls]


def split(
    wheels: Path,
    parts_dir: Path,
    repo_bytes: int,
    part_bytes: int = PART_BYTES,
    call_limit: int = CALL_LIMIT,
    margin: int = MARGIN,
) -> dict:
    """Cut every wheel in `wheels` into `parts_dir/callNN/`, return the manifest."""
    budget = call_limit - repo_bytes - margin
    part_bytes = min(part_bytes, budget)
    files = []
    parts: list[tuple[str, int]] = []
    for wheel in sorted(wheels.glob("*.whl")):
        entry = {"name": wheel.name, "bytes": wheel.stat().st_size, "sha256": sha256(wheel)}
        names = []
        with wheel.open("rb") as handle:
            for index, chunk in enumerate(iter(lambda: handle.read(part_bytes), b"")):
                part = f"{wheel.name}.part{index:03d}"
                (parts_dir / "flat").mkdir(parents=True, exist_ok=True)
                (parts_dir / "flat" / part).write_bytes(chunk)
                names.append(part)
                parts.append((part, len(chunk)))
        entry["parts"] = names
        files.append(entry)
    calls = pack(parts, budget)
    sizes = dict(parts)
    for number, names in enumerate(calls, start=1):
        folder = parts_dir / f"call{number:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (parts_dir / "flat" / name).rename(folder / name)
    (parts_dir / "flat").rmdir()
    return {
        "call_limit_bytes": call_limit,
        "repo_bytes": repo_bytes,
        "budget_bytes": budget,
        "part_bytes": part_bytes,
        "files": files,
        "calls": [
            {
                "call": number,
                "carry": f".gpu/parts/call{number:02d}",
                "bytes": sum(sizes[n] for n in names),
                "parts": names,
            }
            for number, names in enumerate(calls, start=1)
        ],
    }


def join(manifest: dict, stage: Path, out: Path) -> list[str]:
    """Join each file's parts from `stage` into `out`, check sha256; the problems found."""
    where = {part: call["call"] for call in manifest["calls"] for part in call["parts"]}
    problems = []
    out.mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        absent = [p for p in entry["parts"] if not (stage / p).is_file()]
        if absent:
            calls = sorted({where[p] for p in absent})
            problems.append(f"{entry['name']}: parts missing, re-send call(s) {calls}")
            continue
        target = out / entry["name"]
        with target.open("wb") as handle:
            for part in entry["parts"]:
                handle.write((stage / part).read_bytes())
        if sha256(target) != entry["sha256"] or target.stat().st_size != entry["bytes"]:
            target.unlink()
            calls = sorted({where[p] for p in entry["parts"]})
            problems.append(f"{entry['name']}: sha256 mismatch, re-send call(s) {calls}")
    return problems


def main(argv: list[str]) -> int:
    command = argv[1]
    if command == "missing":
        report = json.loads(Path(argv[2]).read_text())
        full = len(argv) > 4 and argv[4] == "full"
        for name, version in missing(report, image_packages(Path(argv[3])), full):
            print(f"{name}=={version}")
        return 0
    if command == "on-image":
        report = json.loads(Path(argv[2]).read_text())
        for name, version in on_image(report, image_packages(Path(argv[3]))):
            print(f"{name}=={version}")
        return 0
    if command == "split":
        wheels, parts_dir, manifest_path, repo_bytes = argv[2:6]
        manifest = split(Path(wheels), Path(parts_dir), int(repo_bytes))
        Path(manifest_path).write_text(json.dumps(manifest, indent=1) + "\n")
        for call in manifest["calls"]:
            size, count = call["bytes"] / MIB, len(call["parts"])
            print(f"call {call['call']:2d}: {size:6.1f} MiB, {count} parts")
        return 0
    if command == "join":
        manifest = json.loads(Path(argv[2]).read_text())
        problems = join(manifest, Path(argv[3]), Path(argv[4]))
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if command == "calls":  # the number of transfer calls
        print(len(json.loads(Path(argv[2]).read_text())["calls"]))
        return 0
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
