#!/usr/bin/env bash
# The GPU check, one call, for the GPU machine (no network; Python 3.12, torch 2.11+cu130, triton 3.6
# preinstalled; nvcc 13.0) and the self-hosted runner (.github/workflows/gpu.yml):
#
#   bash .ci/gpu_check.sh               # everything, within about 8 minutes
#   bash .ci/gpu_check.sh --until-gpu   # every step before the first one that needs a GPU
#
# Steps; the ones before the line need no GPU, and CI runs them (--until-gpu) in the mirror of the
# GPU machine's stack (.ci/gpu_mirror.sh), so a GPU is only ever spent on what needs one:
#   1. versions.txt: date, command, device, driver, Python/torch/triton/CUDA/nvcc versions
#   2. CUDA_HOME from nvcc plus the CUDA libraries torch uses (.ci/cuda_home.sh), where torch has them
#   3. build: pip install --no-build-isolation --no-deps -e .   (offline: installs nothing else)
#   4. .ci/check_cuda_build.py: symbols resolve, import, CUDA kernels registered, runtime libraries
#   5. what the GPU steps need without a GPU: the benchmark workloads' shapes, the GPU tests collect
#   --------------------------------------------------------------------------------------------
#   6. GPU tests (tests/csrc/test_cuda.py, tests/svs_kernels/test_triton_ops.py, and tests/csrc/test_build.py's check that the
#      CUDA libraries are torch's; the whole suite runs on the same software in CI's mirror), junit xml
#   7. benchmark: ddpm-cifar10-p50, stylegan2-base, tiny-batch, llm-8b-p (one run each, then merged)
# Everything goes to ONE folder, $OUT if set, else benchmarks/results/gpu-check-<UTC time>: the log,
# build.log, check.log, pytest.xml, the benchmark md/json/png, versions.txt. Steps after a failed
# one still run where they can (one log shows everything); the exit status is non-zero if any step
# failed. SVS_GPU_CHECK_BUDGET_S (default 450) bounds the whole check: the tests stop early enough to
# leave SVS_GPU_BENCH_RESERVE_S (default 240) to the benchmark, which is cut off when the budget is
# spent. BENCH_ARGS adds arguments to benchmarks.run; SVS_GPU_TESTS replaces the test list.
set -uo pipefail
cd "$(dirname "$0")/.."
UNTIL_GPU=0
case "${1:-}" in
  --until-gpu) UNTIL_GPU=1 ;;
  "") ;;
  *) echo "usage: bash .ci/gpu_check.sh [--until-gpu]" >&2; exit 2 ;;
esac

# Environment: $SVS_GPU_VENV (a virtualenv with a CUDA torch, e.g. on a self-hosted runner whose
# checkout is cleaned every run), else $PYTHON, else the active one, else ./.venv, else python
# (python3 where there is no python).
if [[ -n "${SVS_GPU_VENV:-}" ]]; then
  . "$SVS_GPU_VENV/bin/activate"
elif [[ -z "${PYTHON:-}" && -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  . .venv/bin/activate
fi
# The GPU machine has python3 (the one that holds torch) and maybe no `python`.
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
START=$SECONDS
BUDGET="${SVS_GPU_CHECK_BUDGET_S:-450}"
RESULTS="${OUT:-benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1
FAILED=()
step() { echo; echo "== [$((SECONDS - START)) s] $*"; }
left() { local s=$((BUDGET - (SECONDS - START))); echo $((s > 1 ? s : 1)); }  # `timeout 0` would mean no limit

step "1. versions ($RESULTS/versions.txt)"
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: bash .ci/gpu_check.sh $*"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo "host: $(hostname)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
  else
    echo "gpu: none (no nvidia-smi)"
  fi
  "$PYTHON" - <<'EOF'
import importlib, platform, torch
print("python:", platform.python_version())
print("torch:", torch.__version__, "| torch.version.cuda:", torch.version.cuda, "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| capability:", torch.cuda.get_device_capability(0),
          "| driver (CUDA API):", torch._C._cuda_getDriverVersion())
for name in ("triton", "numpy", "cupy"):
    try:
        print(f"{name}:", importlib.import_module(name).__version__)
    except Exception as e:
        print(f"{name}: not available ({type(e).__name__})")
EOF
} > "$RESULTS/versions.txt" 2>&1
cat "$RESULTS/versions.txt"
if (( ! UNTIL_GPU )) && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no GPU visible to torch (use --until-gpu for the steps that need none)"
  exit 2
fi

step "2. CUDA_HOME"
if home="$(bash .ci/cuda_home.sh "$PYTHON" 2>"$RESULTS/cuda_home.err")"; then
  export CUDA_HOME="$home"
  echo "CUDA_HOME=$CUDA_HOME (nvcc + the CUDA libraries of torch's nvidia wheels)"
else
  cat "$RESULTS/cuda_home.err"
  echo "keeping CUDA_HOME=${CUDA_HOME:-<unset>} (torch finds its own)"
fi
echo "nvcc: $("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null | tail -n1)" | tee -a "$RESULTS/versions.txt"

step "3. build: pip install --no-build-isolation --no-deps -e .  (log: build.log)"
if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e . \
     > "$RESULTS/build.log" 2>&1; then
  tail -n 60 "$RESULTS/build.log"
  echo "gpu_check: build failed"
  exit 1
fi
grep -E "^(building|error|warning: )" "$RESULTS/build.log" | tail -n 5 || true

step "4. .ci/check_cuda_build.py  (log: check.log)"
"$PYTHON" .ci/check_cuda_build.py > "$RESULTS/check.log" 2>&1 || FAILED+=("check_cuda_build")
cat "$RESULTS/check.log"

GPU_TESTS=(${SVS_GPU_TESTS:-tests/csrc/test_cuda.py tests/svs_kernels/test_triton_ops.py tests/csrc/test_build.py::test_cuda_libraries_are_torchs})
WORKLOADS=(ddpm-cifar10-p50 stylegan2-base tiny-batch llm-8b-p)
step "5. without a GPU: benchmark workloads' shapes, GPU tests collect"
"$PYTHON" -m benchmarks.run --list --workload "$(IFS=,; echo "${WORKLOADS[*]}")" || FAILED+=("benchmark workloads")
"$PYTHON" -m pytest --collect-only -q "${GPU_TESTS[@]}" | tail -n 1 || FAILED+=("test collection")

if (( UNTIL_GPU )); then
  echo
  if (( ${#FAILED[@]} )); then echo "gpu_check --until-gpu: FAILED: ${FAILED[*]} (results: $RESULTS)"; exit 1; fi
  echo "gpu_check --until-gpu: OK; what is left needs a GPU (results: $RESULTS)"
  exit 0
fi

BENCH_RESERVE_S="${SVS_GPU_BENCH_RESERVE_S:-240}"  # of the budget, kept for the benchmark
TEST_LIMIT=$(( $(left) - BENCH_RESERVE_S > 60 ? $(left) - BENCH_RESERVE_S : 60 ))
step "6. GPU tests: ${GPU_TESTS[*]}  (junit: pytest.xml; at most $TEST_LIMIT s)"
timeout "$TEST_LIMIT" "$PYTHON" -m pytest "${GPU_TESTS[@]}" -q -rs --junitxml="$RESULTS/pytest.xml" \
  || FAILED+=("pytest")

step "7. benchmark on cuda: ${WORKLOADS[*]}"
for wl in "${WORKLOADS[@]}"; do
  if (( $(left) < 10 )); then echo "gpu_check: time budget spent, $wl not run"; FAILED+=("bench $wl: no time"); continue; fi
  echo "-- $wl ($(left) s left)"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout "$(left)" "$PYTHON" -m benchmarks.run --device cuda --workload "$wl" --out "$RESULTS/bench-$wl" ${BENCH_ARGS:-} \
    > "$RESULTS/bench-$wl.log" 2>&1 || FAILED+=("bench $wl")
  tail -n 3 "$RESULTS/bench-$wl.log"
done
shopt -s nullglob
parts=("$RESULTS"/bench-*/cuda-*.json)
if (( ${#parts[@]} )); then
  "$PYTHON" -m benchmarks.run --merge "${parts[@]}" --out "$RESULTS" > "$RESULTS/benchmark.md" 2>"$RESULTS/merge.log" \
    || FAILED+=("benchmark merge")
  cat "$RESULTS/benchmark.md"
fi

echo
echo "results: $RESULTS ($((SECONDS - START)) s)"
ls "$RESULTS"
if (( ${#FAILED[@]} )); then
  echo "gpu_check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu_check: OK"
