#!/usr/bin/env bash
# One GPU check in about 4 minutes: sm_90 build, CUDA tests, SecMI benchmark, precision table, demo attack; JSON under $OUT.
#
#   OUT=/some/dir bash bench/gpu_check.sh          (from the repository root; OUT defaults to ./gpu_out)
#
# Stages, in order of what a GPU session most needs, each under `timeout` with its own
# limit and all of them under one budget (GPU_CHECK_BUDGET, default 240 s: a stage gets
# the smaller of its limit and what is left, and is skipped when under 15 s is left):
#   environment  20 s   nvidia-smi, nvcc, torch                       -> environment.json
#   build       100 s   cmake + ninja, both modules for sm_90          (log only)
#   cuda_tests   75 s   pytest -m cuda over tests/                     -> cuda_tests.json
#   benchmark    90 s   CIFAR-10 UNet, batch 256, every variant        -> bench_gpu.json
#   precision    40 s   demo t-errors at each variant vs strict fp32  -> secmi_precision.json
#   attack       60 s   demo attack at auto vs strict fp32             -> attack_accuracy.json
# Every stage's output goes to gpu_check.log; summary.json (bench/gpu_summary.py) holds each
# stage's status and seconds, the headline figures and what they mean for the defaults. The
# Python stages rewrite their JSON as each part finishes, so a stage cut short keeps what it
# measured. At most 8 files come back from a device run: this writes 7.
# Needs python3 with torch (CUDA), numpy, click, pybind11 and pytest, plus cmake, ninja and
# nvcc: the workplace's CUDA image has them; nothing is downloaded or installed.
#
# GPU_CHECK_DEVICE=cpu is a dry run for a machine without a GPU: no build (the installed
# package is used), the same stages on the CPU at tiny sizes, so the script and every Python
# stage can be checked before a GPU session spends device time on them.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-build/gpu}"
BUDGET="${GPU_CHECK_BUDGET:-240}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
# Sizes as words (the stages run in child shells, which see exported strings, not arrays).
if [[ "$DEVICE" == cuda ]]; then
  BENCH_SIZES="--models cifar10 --batch-sizes 256 --batches-per-job 2"
  PRECISION_SIZES="--members 200 --holdout 1000"
  ATTACK_SIZES=""
else  # the dry run: the smallest sizes that go through every code path
  BENCH_SIZES="--models demo --batch-sizes 2 --batches-per-job 1 --threads 1"
  PRECISION_SIZES="--members 2 --holdout 2 --threads 1"
  ATTACK_SIZES="--accuracy-max-per-set 10 --threads 1"
fi
LOGS="$(mktemp -d)"
START=$(date +%s)
STAGES="$LOGS/stages.jsonl"
: >"$STAGES"
export OUT PYTHON BUILD_DIR LOGS DEVICE BENCH_SIZES PRECISION_SIZES ATTACK_SIZES

# run_stage NAME LIMIT: the shell function NAME in a child bash under `timeout` (which cannot
# run a function itself), for the smaller of LIMIT and the budget left; its output is appended
# to $OUT/gpu_check.log; one JSON line per stage goes to $STAGES for the summary.
run_stage() {
  local name="$1" limit="$2" left t0 rc status
  left=$(( BUDGET - ($(date +%s) - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 15 )); then
    echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left" | tee -a "$OUT/gpu_check.log"
    printf '{"stage": "%s", "status": "skipped", "exit": null, "seconds": 0, "limit": %d}\n' "$name" "$limit" >>"$STAGES"
    return 1
  fi
  echo "== $name (limit ${limit}s)" | tee -a "$OUT/gpu_check.log"
  t0=$(date +%s)
  export -f "$name"
  timeout --kill-after=5 "$limit" bash -o pipefail -c "$name" >"$LOGS/$name.log" 2>&1
  rc=$?
  status=ok
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && status=failed
  cat "$LOGS/$name.log" >>"$OUT/gpu_check.log"
  printf '{"stage": "%s", "status": "%s", "exit": %d, "seconds": %d, "limit": %d}\n' \
    "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >>"$STAGES"
  echo "== $name: $status (exit $rc) after $(( $(date +%s) - t0 ))s" | tee -a "$OUT/gpu_check.log"
  tail -n 20 "$LOGS/$name.log"
  return $rc
}

summarize() {
  "$PYTHON" bench/gpu_summary.py summary --out "$OUT" --stages "$STAGES" --budget "$BUDGET" \
    --total-seconds "$(( $(date +%s) - START ))" || {
    # No Python summary: the stage lines alone, so the run still says what happened.
    { echo '{"summary_failed": true, "stages": ['; paste -sd, "$STAGES"; echo ']}'; } >"$OUT/summary.json"
  }
  echo "== summary: $OUT/summary.json (decisions above)"
  rm -rf "$LOGS"
}
trap summarize EXIT

# --- 1. what this machine is ------------------------------------------------------------
environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  nvcc --version | tail -2 || true
  cmake --version | head -1 || true
  "$PYTHON" bench/gpu_summary.py environment --out "$OUT/environment.json"
}
run_stage environment 20
if [[ "$DEVICE" == cuda ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to $PYTHON's torch: stopping after the environment stage" | tee -a "$OUT/gpu_check.log"
  exit 1
fi

# --- 2. both modules for sm_90, copied where `import qmia_fast` (PYTHONPATH=python) finds them ---
build() {
  local pybind11_dir module
  pybind11_dir=$("$PYTHON" -m pybind11 --cmakedir) || return 1
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DQMIA_BUILD_PYTHON=ON -DQMIA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$pybind11_dir" \
    || return 1
  cmake --build "$BUILD_DIR" -j "$(nproc)" || return 1
  for module in "$BUILD_DIR"/_cpu*.so "$BUILD_DIR"/_cuda*.so; do
    [[ -e "$module" ]] || { echo "missing build output $module"; return 1; }
    # Copies, not links: a link left by another checkout could point anywhere.
    rm -f "python/qmia_fast/$(basename "$module")"
    cp "$module" python/qmia_fast/
  done
  "$PYTHON" -c "import qmia_fast.kernels.dispatch as k; assert k.cuda_built(), k._CUDA_IMPORT_ERROR; \
print('CUDA module imported:', k._cuda.build_info())"
}
if [[ "$DEVICE" == cuda ]]; then
  run_stage build 100 || { echo "build failed: nothing else can run" | tee -a "$OUT/gpu_check.log"; exit 1; }
fi

# --- 3. every CUDA test: kernels vs CPU twins and float64, fused GroupNorm, graphs, streams, scorer ---
cuda_tests() {
  local parallel=()
  # Four workers where pytest-xdist is there: collection and the CPU side dominate these tests.
  "$PYTHON" -c "import xdist" 2>/dev/null && parallel=(-n 4)
  local timeout_opt=()
  "$PYTHON" -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout 40)
  "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests "${parallel[@]}" "${timeout_opt[@]}" \
    --junitxml="$LOGS/cuda_tests.xml"
  local rc=$?
  "$PYTHON" bench/gpu_summary.py junit "$LOGS/cuda_tests.xml" --out "$OUT/cuda_tests.json"
  return $rc
}
run_stage cuda_tests 75

# --- 4. SecMI throughput: the CIFAR-10 UNet (35.7M parameters) at batch 256, every variant ------
# The plain loop with PyTorch's defaults (TF32 convolutions) and with TF32 off, then qmia-fast
# at auto (fp16), fp16 with the fused GroupNorm forced on and off, tf32, mixed, mixed-tf32, strict
# fp32 and bf16; 2 batches per timed job, 2 rounds, top-kernel profiles of one batch.
benchmark() {
  "$PYTHON" bench/bench_scoring.py --device "$DEVICE" --quick $BENCH_SIZES --rounds 2 \
    --precisions auto,fp16:fused,fp16:unfused,tf32,mixed,mixed-tf32,fp32,bf16 --no-vote --profile \
    --out "$OUT/bench_gpu.json"
}
run_stage benchmark 90

# --- 5. the precision table: 200 members + 1,000 holdout of the demo, each variant vs strict fp32 ---
precision() {
  "$PYTHON" bench/bench_secmi_precision.py --device "$DEVICE" $PRECISION_SIZES \
    --variants auto,fp16:fused,tf32,bf16,mixed,mixed-tf32 --out "$OUT/secmi_precision.json"
}
run_stage precision 40

# --- 6. the demo attack (its recommended score, the bag with the same seed) at auto vs strict fp32 ---
attack() {
  "$PYTHON" bench/bench_scoring.py accuracy --device "$DEVICE" $ATTACK_SIZES --precisions auto \
    --out "$OUT/attack_accuracy.json"
}
run_stage attack 60

exit 0
