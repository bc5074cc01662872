#!/usr/bin/env bash
# Prepares vLLM for the GPU machine (no network there): resolves vLLM's dependency tree for
# Python 3.12 / manylinux x86_64 against PyPI, keeps what the GPU image lacks, downloads those
# wheels, cuts them into parts and packs the parts into device calls of < 64 MiB each
# (.gpu/parts/callNN, .gpu/manifest.json). Runs here, with network; bench/gpu/README.md says
# what to send. Idempotent: downloads are kept in .gpu/wheels.
#
#   bench/gpu/prepare.sh              # core set (see EXCLUDED in plan.py)
#   GPU_TIER=full bench/gpu/prepare.sh   # every dependency vLLM lists
#   VLLM_VERSION=0.25.1 bench/gpu/prepare.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
VLLM_VERSION=${VLLM_VERSION:-0.26.0}   # newest vLLM that pins torch==2.11.0 (the image's)
GPU_TIER=${GPU_TIER:-core}
PY312=${PY312:-}
HERE=bench/gpu
DIR=.gpu
mkdir -p "$DIR/wheels"

# A Python 3.12 with a recent pip, so environment markers evaluate as on the GPU machine.
if [ -z "$PY312" ]; then
  for candidate in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      PY312=$candidate; break
    fi
  done
fi
[ -n "$PY312" ] || { echo "prepare.sh: needs a python3.12 (set PY312)" >&2; exit 2; }
if [ ! -x "$DIR/pip312/bin/python" ]; then
  "$PY312" -m venv "$DIR/pip312"
  "$DIR/pip312/bin/python" -m pip install --isolated -q -U pip
fi
PIP=("$DIR/pip312/bin/python" -m pip)

PLATFORMS=()
for n in $(seq 39 -1 17); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
  --platform manylinux1_x86_64)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")

# 1. The pin: vLLM must require the image's torch, or it would need a torch of its own.
"${PIP[@]}" install --isolated -q --dry-run --no-deps --ignore-installed \
  --report "$DIR/vllm-only.json" "vllm==$VLLM_VERSION" >/dev/null
python3 - "$DIR/vllm-only.json" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))["install"][0]["metadata"]
pins = [r for r in meta["requires_dist"] if r.split(";")[0].strip().startswith("torch==")]
print(f"vllm {meta['version']} requires {pins}")
if pins != ["torch==2.11.0"]:
    sys.exit("prepare.sh: this vLLM does not pin the GPU image's torch==2.11.0")
EOF

# 2. The whole tree (vLLM, plus what bench/scorer.py imports from guardstream's own
#    dependencies), holding the image's known versions fixed.
"${PIP[@]}" install --isolated -q --dry-run --ignore-installed "${TARGET[@]}" \
  --target "$DIR/resolve-target" -c "$HERE/image-pins.txt" --report "$DIR/resolved.json" \
  "vllm==$VLLM_VERSION" orjson pydantic-settings >/dev/null
python3 "$HERE/plan.py" missing "$DIR/resolved.json" "$HERE/image-packages.txt" "$GPU_TIER" \
  > "$DIR/carry.txt"
echo "carrying $(wc -l < "$DIR/carry.txt") distributions ($GPU_TIER)"

# 3. Download (one version each; a wheel already there is kept), and only those.
"${PIP[@]}" download --isolated -q --no-deps "${TARGET[@]}" -d "$DIR/wheels" -r "$DIR/carry.txt"
rm -rf "$DIR/carried" && mkdir -p "$DIR/carried"
python3 - "$DIR/carry.txt" "$DIR/wheels" "$DIR/carried" <<'EOF'
import re, sys
from pathlib import Path
want = {}
for line in open(sys.argv[1]):
    name, version = line.strip().split("==")
    want[re.sub(r"[-_.]+", "_", name).lower()] = version
for wheel in Path(sys.argv[2]).glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if want.get(re.sub(r"[-_.]+", "_", name).lower()) == version:
        (Path(sys.argv[3]) / wheel.name).symlink_to(wheel.resolve())
        del want[re.sub(r"[-_.]+", "_", name).lower()]
if want:
    sys.exit(f"prepare.sh: no wheel downloaded for {sorted(want)}")
EOF

# 4. Parts and calls. The budget: 64 MiB less what always travels (tracked and untracked,
#    not ignored, files of THIS checkout: run prepare.sh in the checkout the device tool sends).
REPO_BYTES=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
rm -rf "$DIR/parts"
python3 "$HERE/plan.py" split "$DIR/carried" "$DIR/parts" "$DIR/manifest.json" "$REPO_BYTES"
for call in "$DIR"/parts/call*; do cp "$DIR/manifest.json" "$call/manifest.json"; done

# 5. The tiny test checkpoint (its tokenizer and template serve the random shapes too), built
#    here once and sent with the last call, so the GPU machine does not train it.
if [ "${CARRY_TINY:-1}" = 1 ]; then
  TINY=$(PYTHONPATH=services .venv/bin/python -c '
from guardstream.model.tiny import ensure_tiny_checkpoint
from guardstream.runtime.settings import Settings
print(ensure_tiny_checkpoint(Settings().model.cache_dir))')
  LAST=$(ls -d "$DIR"/parts/call* | tail -1)
  mkdir -p "$LAST/cache" && cp -r "$TINY" "$LAST/cache/"
fi

# 6. Every call within the limit, with what always travels.
for call in "$DIR"/parts/call*; do
  bytes=$(( $(du -cb "$call" | tail -1 | cut -f1) + REPO_BYTES ))
  [ "$bytes" -lt $((64 * 1024 * 1024)) ] || { echo "prepare.sh: $call is $bytes bytes" >&2; exit 1; }
done

# 7. Nothing left out is imported where the scorer's vLLM path loads (static, from the wheel).
[ "$GPU_TIER" = full ] || python3 "$HERE/imports.py" "$(ls "$DIR"/wheels/vllm-"$VLLM_VERSION"-*.whl)" | tail -1
du -shL "$DIR/carried" | sed 's/^/carried in all: /'

# 8. Optional (SIMULATE_IMAGE=1; ~3 GB more): the image's packages as the resolver chose them
#    (torch 2.11.0+cu130 and its CUDA wheels, transformers, ...) in a folder of their own, the
#    carried set joined from the parts and installed as on the GPU machine, and run.sh's import
#    probe over both. Without a GPU driver here, only vllm.platforms.cuda may fail (libcuda).
if [ "${SIMULATE_IMAGE:-0}" = 1 ]; then
  python3 "$HERE/plan.py" on-image "$DIR/resolved.json" "$HERE/image-packages.txt" \
    > "$DIR/on-image.txt"
  "${PIP[@]}" download --isolated -q --no-deps "${TARGET[@]}" -d "$DIR/image-wheels" \
    -r "$DIR/on-image.txt"
  rm -rf "$DIR/sim" && mkdir -p "$DIR/sim"
  "${PIP[@]}" install -q --no-index --no-deps --no-compile --target "$DIR/sim/image" \
    "$DIR"/image-wheels/*.whl
  for call in "$DIR"/parts/call*; do
    GPU_STAGE="$DIR/sim" PY="$DIR/pip312/bin/python" bash "$HERE/run.sh" stage "${call##*call}"
  done
  GPU_STAGE="$DIR/sim" PY="$DIR/pip312/bin/python" IMAGE_PATH="$DIR/sim/image" OUT="$DIR/sim" \
    bash "$HERE/run.sh" install 2>/dev/null | grep -v '^INFO\|^WARNING' > "$DIR/sim/probe.txt" || true
  cat "$DIR/sim/probe.txt" | grep -v '^+' | tail -12
  if grep '^probe: cannot import' "$DIR/sim/probe.txt" | grep -qv 'libcuda.so'; then
    echo "prepare.sh: the carried set misses a module (above)" >&2; exit 1
  fi
  grep -q '^vllm 0' "$DIR/sim/probe.txt" || { echo "prepare.sh: vLLM did not import" >&2; exit 1; }
  echo "simulated image: vLLM's serving path imports (only the driver is missing here)"
fi
echo "manifest: $DIR/manifest.json; send the calls as bench/gpu/README.md says"
