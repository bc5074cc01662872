#!/usr/bin/env bash
# Runs ON the GPU machine (device tool `run`), from the repository root. bench/gpu/README.md
# gives the call sequence. Verbs:
#
#   run.sh stage K     copy call K's carried parts (.gpu/parts/callKK) to $GPU_STAGE, which
#                      stays on the machine between consecutive calls while it is warm
#   run.sh install     join the parts, check every sha256, pip-install into $GPU_STAGE/site,
#                      then import vLLM and print what it sees
#   run.sh measure     bench/scorer.py --engine vllm for each of $SIZES (cheapest first), each
#                      within its share of $MEASURE_SECONDS; output in $OUT
#
# DRY_RUN=1 prints the commands instead of running them (any machine). The measure step runs on
# a CPU too (SIZES=tiny PY=.venv/bin/python POSTS=8 IN_FLIGHT=2,4): that is how its flags are
# tested here.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
GPU_STAGE=${GPU_STAGE:-$ROOT/.gpu-stage}   # ignored (.gitignore): kept between warm calls
SITE=$GPU_STAGE/site
PY=${PY:-python3}
OUT=${OUT:-$ROOT/.gpu/out}
DRY_RUN=${DRY_RUN:-0}
# No network there: nothing may wait on the model hub or usage statistics.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

run() {  # echo the command (its first 600 characters); run it unless DRY_RUN=1
  local text="$*"
  echo "+ ${text:0:600}" >&2
  [ "$DRY_RUN" = 1 ] || "$@"
}

stage() {
  local call
  call=$(printf 'call%02d' "$((10#$1))")
  [ -d ".gpu/parts/$call" ] || { echo "run.sh: .gpu/parts/$call was not carried" >&2; return 1; }
  run mkdir -p "$GPU_STAGE"
  run cp -rf .gpu/parts/"$call"/. "$GPU_STAGE"/
  [ "$DRY_RUN" = 1 ] && return 0
  echo "staged $call: $(find "$GPU_STAGE" -maxdepth 1 -name '*.part[0-9]*' | wc -l) parts" \
    "in $GPU_STAGE, $(du -sh "$GPU_STAGE" | cut -f1)"
  # The parts of calls 1..K must all be here: if the machine went back between two calls
  # (idle past its warm time), the earlier calls' parts are gone and must be sent again.
  "$PY" - "$GPU_STAGE" "$((10#$1))" <<'PY'
import json, sys
from pathlib import Path
stage, upto = Path(sys.argv[1]), int(sys.argv[2])
calls = json.loads((stage / "manifest.json").read_text())["calls"]
lost = [c["call"] for c in calls[:upto] if any(not (stage / p).is_file() for p in c["parts"])]
if lost:
    sys.exit(f"run.sh: parts of call(s) {lost} are not on this machine (was it given back "
             "between calls?): send those calls again")
print(f"calls 1..{upto} of {len(calls)} staged")
PY
}

install() {
  local wheels=$GPU_STAGE/wheels
  run "$PY" bench/gpu/plan.py join "$GPU_STAGE/manifest.json" "$GPU_STAGE" "$wheels" || return 1
  run rm -rf "$SITE"
  [ "$DRY_RUN" = 1 ] || ldd --version 2>&1 | head -1   # glibc: the manylinux tags it takes
  # A wheel this machine refuses (a manylinux tag newer than its glibc, say) would stop pip for
  # all of them; one pip per wheel would break namespace packages (opentelemetry/, google/)
  # in one --target. So set those aside first, name them, and install the rest at once.
  run "$PY" - "$wheels" <<'PY' || return 1
import sys
from pathlib import Path
try:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
except ImportError:  # pip's own copy
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import parse_wheel_filename
here = set(sys_tags())
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    if not parse_wheel_filename(wheel.name)[3] & here:
        (wheel.parent / "refused").mkdir(exist_ok=True)
        wheel.rename(wheel.parent / "refused" / wheel.name)
        print("install: left out (not for this machine):", wheel.name)
PY
  run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$wheels"/*.whl || return 1
  if [ "$DRY_RUN" != 1 ]; then rm -f "$GPU_STAGE"/*.part[0-9]*; rm -rf "$wheels"; fi
  probe
}

probe() {  # what the measuring call will see; fails fast on a missing module
  # IMAGE_PATH: a folder standing in for the image's packages (prepare.sh's SIMULATE_IMAGE=1).
  run env PYTHONPATH="$SITE:${IMAGE_PATH:+$IMAGE_PATH:}$ROOT/services" "$PY" -c '
import importlib, importlib.metadata as md, sys
import torch, vllm
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("vllm", vllm.__version__, "from", vllm.__file__)
for name in ("transformers", "numpy", "pydantic", "numba", "triton", "flashinfer-python"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
failed = []
# The modules the scorer loads on a GPU (bench/gpu/imports.py follows the same from the wheel).
for module in ("vllm.v1.engine.async_llm", "vllm.v1.engine.core", "vllm.v1.worker.gpu_worker",
               "vllm.v1.worker.gpu_model_runner", "vllm.model_executor.models.qwen3",
               "vllm.v1.attention.backends.flash_attn", "vllm.v1.sample.sampler",
               "vllm.platforms.cuda", "guardstream.scorer.vllm_engine"):
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed.append(module)
        print("probe: cannot import", module, "-", type(exc).__name__, exc)
sys.exit(1 if failed else 0)
'
}

measure() {
  # Sizes cheapest first, so the 0.6B's figures come back even if a later size runs out of time.
  local sizes=${SIZES:-0.6B 4B 8B}
  local total=${MEASURE_SECONDS:-470} started=$SECONDS
  local limits=${IN_FLIGHT:-8,32,128}
  local tokens=${POST_TOKENS:-300}
  local cache=${CACHE_DIR:-$GPU_STAGE/cache}  # the tiny checkpoint came with the last call
  run mkdir -p "$OUT"
  [ "$DRY_RUN" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    > "$OUT/gpu.txt" 2>&1
  # Each size gets its weight's share of the time still left (bigger shapes weigh more).
  weight() { case $1 in 8B) echo 14 ;; 4B) echo 12 ;; *) echo 10 ;; esac; }
  local rest=() size
  read -r -a rest <<< "$sizes"
  while [ "${#rest[@]}" -gt 0 ]; do
    size=${rest[0]}
    local left=$((total - (SECONDS - started))) sum=0 s
    for s in "${rest[@]}"; do sum=$((sum + $(weight "$s"))); done
    local share=$((left * $(weight "$size") / sum))
    rest=("${rest[@]:1}")
    [ "$share" -lt 30 ] && { echo "run.sh: no time left for $size" >&2; break; }
    local model=random-$size posts=${POSTS:-256}
    [ "$size" = tiny ] && model=tiny
    [ "$size" = 0.6B ] && posts=${POSTS:-512}
    local log=$OUT/scorer-vllm-$size.txt
    [ "$DRY_RUN" = 1 ] && log=/dev/null
    echo "== $size: $share s, $posts posts, in flight $limits, $tokens-token posts" | tee "$log"
    local begun=$SECONDS
    if [ "$size" != tiny ]; then
      # The random checkpoint is built (on the GPU) in a process of its own, which gives its
      # GPU memory back before vLLM's engine measures what is free.
      run env PYTHONPATH="$SITE:$ROOT/services" timeout "$share" \
        "$PY" bench/random_qwen3.py "$size" --cache-dir "$cache" --post-tokens "$tokens" 2>&1 \
        | { [ "$DRY_RUN" = 1 ] && cat || tee -a "$log"; }
      echo "== $size: checkpoint ready after $((SECONDS - begun)) s" | tee -a "$log"
    fi
    share=$((share - (SECONDS - begun)))
    [ "$share" -lt 30 ] && { echo "run.sh: no time left for $size" >&2; break; }
    run env PYTHONPATH="$SITE:$ROOT/services" PYTHONUNBUFFERED=1 \
      timeout --signal=INT --kill-after=15 "$share" \
      "$PY" bench/scorer.py --engine vllm --model "$model" --posts "$posts" \
      --in-flight "$limits" --post-tokens "$tokens" --cache-dir "$cache" 2>&1 \
      | { [ "$DRY_RUN" = 1 ] && cat || tee -a "$log"; }
    echo "== $size: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$log"
    # The last line of a finished run is its JSON summary: one line per size.
    [ "$DRY_RUN" = 1 ] || grep '^{"bench":"scorer"' "$log" >> "$OUT/scorer-vllm.jsonl"
  done
  return 0
}

case "${1:-}" in
  stage) stage "$2" ;;
  install) mkdir -p "$OUT"; install 2>&1 | tee "$OUT/install.txt"; exit "${PIPESTATUS[0]}" ;;
  probe) probe ;;
  measure) measure ;;
  *) echo "usage: run.sh stage K | install | probe | measure" >&2; exit 2 ;;
esac
