#!/usr/bin/env bash
# The check for a GPU machine and for the self-hosted GPU runner (.github/workflows/gpu.yml):
#   1. build the extension with the CUDA kernel (pip install --no-build-isolation -e .),
#   2. assert the CUDA kernel of svs::refine is registered,
#   3. run every test (the GPU tests of tests/test_cuda.py included),
#   4. a benchmark smoke run on the GPU (ddpm-cifar10-p50 and tiny-batch).
# Needs: a CUDA build of torch already installed (see "Environment" below), nvcc
# (CUDA_HOME), an NVIDIA GPU. Logs and benchmark results go to
# benchmarks/results/gpu-check-<UTC time>/; the exit status is non-zero if any step failed (the
# later steps still run, so one log shows everything).
#
#   bash benchmarks/gpu_check.sh                 # everything
#   BENCH_ARGS="--quick" bash benchmarks/gpu_check.sh   # extra arguments for benchmarks.run
set -uo pipefail
cd "$(dirname "$0")/.."

# Environment: $SVS_GPU_VENV (a virtualenv with a CUDA torch, e.g. on a self-hosted runner whose
# checkout is cleaned every run), else the active one, else ./.venv, else the python on PATH.
if [[ -n "${SVS_GPU_VENV:-}" ]]; then
  . "$SVS_GPU_VENV/bin/activate"
elif [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  . .venv/bin/activate
fi
PYTHON="${PYTHON:-python}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
LOG_DIR="benchmarks/results/gpu-check-$STAMP"
mkdir -p "$LOG_DIR"
exec > >(tee -a "$LOG_DIR/gpu_check.log") 2>&1
FAILED=()
step() { echo; echo "== $*"; }

step "environment"
nvidia-smi || true
"$PYTHON" - <<'EOF'
import torch
from torch.utils.cpp_extension import CUDA_HOME
print("torch", torch.__version__, "| torch.version.cuda", torch.version.cuda, "| CUDA_HOME", CUDA_HOME)
print("cuda available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
EOF
"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)' || {
  echo "gpu_check: needs a CUDA build of torch and a visible GPU (the CPU build cannot build the CUDA kernel)"
  exit 2
}

step "build: pip install --no-build-isolation -e .  (log: $LOG_DIR/build.log)"
if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PYTHON" -m pip install --no-build-isolation -v -e . > "$LOG_DIR/build.log" 2>&1; then
  tail -n 60 "$LOG_DIR/build.log"
  echo "gpu_check: build failed"
  exit 1
fi

step "CUDA kernel registered"
if ! "$PYTHON" -c 'import svs_kernels, sys; ok = svs_kernels.has_cuda_kernel(); print("svs_kernels.has_cuda_kernel():", ok); sys.exit(0 if ok else 1)'; then
  echo "gpu_check: the build has no CUDA kernel (check torch.version.cuda and CUDA_HOME in $LOG_DIR/build.log)"
  exit 1
fi

step "tests: pytest tests/ -q  (junit: $LOG_DIR/pytest.xml)"
"$PYTHON" -m pytest tests/ -q -rs --junitxml="$LOG_DIR/pytest.xml" || FAILED+=("pytest")

step "benchmark smoke run: ddpm-cifar10-p50, tiny-batch"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
"$PYTHON" -m benchmarks.run --device cuda --workload ddpm-cifar10-p50,tiny-batch --out "$LOG_DIR" ${BENCH_ARGS:-} \
  || FAILED+=("benchmarks.run")

echo
if (( ${#FAILED[@]} )); then
  echo "gpu_check: FAILED: ${FAILED[*]} (logs: $LOG_DIR)"
  exit 1
fi
echo "gpu_check: OK (logs: $LOG_DIR)"
