#!/usr/bin/env bash
# GPU check for one H200-class machine: build the core for sm_90, run the CUDA tests and the GPU scoring benchmark, JSON under $OUT.
#
#   OUT=/some/dir bash bench/gpu_check.sh          (from the repository root; OUT defaults to ./gpu_out)
#
# Budget: 8 minutes in all. Each stage has its own time limit, so a stage that hangs
# costs its share, not the rest: environment <= 30 s, build <= 170 s, CUDA tests <= 110 s,
# benchmark <= 160 s (470 s in all). Every stage writes its log under $OUT, and summary.json
# records each stage's exit status and seconds even when one fails (the script goes on).
# Needs python3 with torch (CUDA build), pybind11, click, numpy and pytest, plus cmake,
# ninja and nvcc: the workplace's CUDA image has them; nothing is downloaded.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-build/gpu}"
START=$(date +%s)
declare -A STATUS SECONDS_USED

export OUT PYTHON BUILD_DIR

# run_stage NAME LIMIT_SECONDS: runs the shell function NAME in a child bash under `timeout`
# (which cannot run a function itself), logging to $OUT/NAME.log.
run_stage() {
  local name="$1" limit="$2"
  local t0
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)" | tee -a "$OUT/gpu_check.log"
  export -f "$name"
  timeout --kill-after=10 "$limit" bash -o pipefail -c "$name" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]=$rc
  SECONDS_USED[$name]=$(( $(date +%s) - t0 ))
  echo "== $name: exit $rc after ${SECONDS_USED[$name]}s" | tee -a "$OUT/gpu_check.log"
  tail -n 25 "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
  return $rc
}

write_summary() {
  {
    echo "{"
    echo "  \"total_seconds\": $(( $(date +%s) - START )),"
    echo "  \"stages\": {"
    local first=1
    for name in environment build cuda_tests benchmark; do
      [[ -n "${STATUS[$name]+set}" ]] || continue
      [[ $first -eq 1 ]] || echo ","
      first=0
      printf '    "%s": {"exit": %s, "seconds": %s}' "$name" "${STATUS[$name]}" "${SECONDS_USED[$name]}"
    done
    echo ""
    echo "  }"
    echo "}"
  } >"$OUT/summary.json"
}
trap write_summary EXIT

# --- 1. what this machine is --------------------------------------------------------
environment() {
  nvidia-smi || true
  nvcc --version || true
  cmake --version | head -1 || true
  "$PYTHON" - <<'EOF'
import json, platform
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "cpu_count": __import__("os").cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
print(json.dumps(info, indent=2))
EOF
}
run_stage environment 30
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no CUDA device visible to $PYTHON's torch: stopping after the environment stage" | tee -a "$OUT/gpu_check.log"
  exit 1
fi

# --- 2. build both modules for sm_90 and put them where `import qmia_fast` finds them --------
build() {
  local pybind11_dir
  pybind11_dir=$("$PYTHON" -m pybind11 --cmakedir) || return 1
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DQMIA_BUILD_PYTHON=ON -DQMIA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$pybind11_dir" \
    || return 1
  cmake --build "$BUILD_DIR" -j "$(nproc)" || return 1
  local module
  for module in "$BUILD_DIR"/_cpu*.so "$BUILD_DIR"/_cuda*.so; do
    [[ -e "$module" ]] || { echo "missing build output $module"; return 1; }
    # Copies, not links: a link left by another checkout could point anywhere.
    rm -f "python/qmia_fast/$(basename "$module")"
    cp "$module" python/qmia_fast/
  done
  PYTHONPATH=python "$PYTHON" -c "import qmia_fast.kernels as k; assert k.cuda_built(), k._CUDA_IMPORT_ERROR; \
print('CUDA module imported:', k._cuda.build_info())"
}
run_stage build 170 || { echo "build failed: no tests, no benchmark"; exit 1; }

# --- 3. CUDA tests: kernels (bit-equal to the CPU, streams, graphs) and the scorer (graphs = eager) ----
cuda_tests() {
  PYTHONPATH=python "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_kernels_cuda.py tests/test_kernels_samples.py tests/test_scoring_speed.py \
    tests/test_scoring.py -k "cuda or graph or sync or samples" \
    --junitxml="$OUT/cuda_tests.xml"
}
run_stage cuda_tests 110

# --- 4. GPU benchmark: baseline vs qmia-fast at each precision, CIFAR-10 UNet and demo ---------
# Sizes chosen to fit ~160 s on an H200: the CIFAR-10 model (35.7M parameters, 12.4 GFLOP per
# UNet call) at 256 and 1024 images per batch, 2 batches per timed job (so upload, compute and
# download overlap), 2 rounds; the demo model at 256 and 1024.
benchmark() {
  PYTHONPATH=python "$PYTHON" bench/bench_scoring.py --device cuda --models cifar10,demo \
    --batch-sizes "cifar10=256,1024;demo=256,1024" --precisions auto,fp32,bf16,mixed --rounds 2 \
    --batches-per-job 2 --no-bag --out "$OUT/bench_gpu.json"
}
run_stage benchmark 160

exit 0
