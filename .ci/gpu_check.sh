#!/usr/bin/env bash
# The GPU check, in two stages of one call each, for the GPU machine (no network; Python 3.12,
# torch 2.11+cu130, triton 3.6, numpy 2.5.2, no diffusers, no torch-pruning: constraints-cu130.txt)
# and the self-hosted runner (.github/workflows/gpu.yml):
#
#   bash .ci/gpu_check.sh 1 [--dry-run]   # build, load check, GPU tests          (at most 6 min)
#   bash .ci/gpu_check.sh 2 [--dry-run]   # benchmark, most telling numbers first  (at most 6 min)
#
# --dry-run does every step with the GPU steps replaced: the GPU tests run where they skip without
# a GPU (collection, xdist, timeouts, the test log), the benchmark builds its workloads and writes
# its files without timing (benchmarks.run --dry-run). CI rehearses both stages so in the mirror of
# the GPU image (.ci/gpu_mirror.sh, .ci/gpu_report.py check-out), so a lent GPU is spent on the GPU.
#
# Time plan (seconds of wall time; the device lends 15 min in all, machine start-up of 1-2 min
# included, one command at most 10 min): start-up 120 + stage 1 360 + stage 2 360 = 840 s < 900 s.
# Stage 1 (SVS_STAGE_S, default 360):
#     versions, CUDA_HOME                5   (nvidia-smi, one python)
#     build                            150   (setup.py with the CUDA kernel; MAX_JOBS = 16 cores;
#                                           cut off at SVS_BUILD_S, default 170)
#     load and registration check       20   (.ci/check_cuda_build.py)
#     GPU tests                        rest  (~170: pytest-xdist, 8 workers on one GPU, 90 s per
#                                           test at most; route correctness first; ~700 tests, most
#                                           of the time Triton compiling its variants, ~1 s each)
#     summary and packing               15   (reserved: the tests are stopped with SIGINT before it)
# Stage 2 (SVS_STAGE_S, default 360): the build again only if stage 1's is gone (a fresh machine:
#     150 s less for the benchmark), then one process per workload, each under its own limit, its
#     JSON rewritten after every measured peer so a cut-off workload keeps what it measured:
#     ddpm-cifar10-p50 60, stylegan2-base 60, llm-8b-p 120, tiny-batch 60, then the merged table, 15
#     for summary and packing.
#
# Results: at most 8 files in $OUT (the device returns 8, each at most 16 MiB, at most two folders
# deep), else in benchmarks/.cache/gpu-check/stage<N>: summary-stage<N>.txt (also printed last, so
# the command's output tail shows it), stage<N>.tar.gz (every log, junit XML, JSON), and per stage:
#   1: versions.txt, tests.jsonl (one line per test, written as each ends: it survives a kill)
#   2: versions.txt, benchmark.md, benchmark.json, benchmark.png (the merged table)
# The exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-}"
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
if [[ "$STAGE" != 1 && "$STAGE" != 2 ]] || (( $# > 2 )) || [[ -n "${2:-}" && $DRY == 0 ]]; then
  echo "usage: bash .ci/gpu_check.sh 1|2 [--dry-run]" >&2
  exit 2
fi

# Environment: $SVS_GPU_VENV (a virtualenv with a CUDA torch), else $PYTHON, else the active one,
# else ./.venv, else python3 (the GPU machine's python3 holds torch).
if [[ -n "${SVS_GPU_VENV:-}" ]]; then
  . "$SVS_GPU_VENV/bin/activate"
elif [[ -z "${PYTHON:-}" && -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  . .venv/bin/activate
fi
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
START=$SECONDS
BUDGET="${SVS_STAGE_S:-360}"
OUTDIR="${OUT:-benchmarks/.cache/gpu-check/stage$STAGE}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/svs-gpu-stage$STAGE.XXXXXX")"
LOG="$WORK/stage$STAGE.log"
STEPS="$WORK/steps.tsv"  # step, status, seconds: read by the summary
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
left() { local s=$((BUDGET - (SECONDS - START))); echo $((s > 1 ? s : 1)); }
T_STEP=0
step() { echo; echo "== [$((SECONDS - START)) s of $BUDGET] $*"; T_STEP=$SECONDS; }
# done_step NAME STATUS: record the step (ok, FAILED, skipped: why) with its duration.
done_step() { printf '%s\t%s\t%s\n' "$1" "$2" "$((SECONDS - T_STEP))" >> "$STEPS"; }

# Whatever happens (a failed step, the budget spent), pack $WORK into $OUT and print the summary last.
finish() {
  local rc=$?
  trap - EXIT
  "$PYTHON" .ci/gpu_report.py summary "$STAGE" "$WORK" "$((SECONDS - START))" "$BUDGET" "$DRY" \
    > "$WORK/summary-stage$STAGE.txt" 2>&1 || echo "(summary failed; see the log)" >> "$WORK/summary-stage$STAGE.txt"
  "$PYTHON" .ci/gpu_report.py pack "$STAGE" "$WORK" "$OUTDIR" >/dev/null 2>&1 \
    || echo "gpu_check: packing into $OUTDIR failed"
  cat "$WORK/summary-stage$STAGE.txt"
  exec >&- 2>&-  # let tee print everything before this shell exits
  wait "$TEE_PID" 2>/dev/null
  exit "$(grep -q $'\tFAILED' "$STEPS" 2>/dev/null && echo 1 || echo "$rc")"
}
trap finish EXIT

step "versions"
{
  echo "stage: $STAGE$( ((DRY)) && echo ' (dry run)')"
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: bash .ci/gpu_check.sh $*"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /'
  else
    echo "gpu: none (no nvidia-smi)"
  fi
  "$PYTHON" .ci/gpu_report.py versions
} > "$WORK/versions.txt" 2>&1
cat "$WORK/versions.txt"
if (( ! DRY )) && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  done_step versions "FAILED: no GPU visible to torch (--dry-run rehearses without one)"
  exit 2
fi
done_step versions ok

build() {  # CUDA_HOME from nvcc + torch's CUDA wheels, then the extension with its CUDA kernel
  if home="$(bash .ci/cuda_home.sh "$PYTHON" 2>"$WORK/cuda_home.err")"; then
    export CUDA_HOME="$home"
  fi
  echo "CUDA_HOME=${CUDA_HOME:-<unset>}; nvcc: $("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null | tail -n1)" \
    | tee -a "$WORK/versions.txt"
  local limit="${SVS_BUILD_S:-170}"
  (( limit > $(left) )) && limit=$(left)
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" timeout -k 10 "$limit" \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e . > "$WORK/build.log" 2>&1
}
has_cuda_build() {  # the extension imports and has its CUDA kernel (stage 1 built it on this machine)
  "$PYTHON" -c 'import sys, svs_kernels; sys.exit(0 if svs_kernels.has_cuda_kernel() else 1)' 2>/dev/null
}

if [[ "$STAGE" == 2 ]] && has_cuda_build; then
  step "build: already built (stage 1 on this machine)"
  done_step build "skipped: already built"
else
  step "build (log: build.log)"
  if build; then done_step build ok; else tail -n 40 "$WORK/build.log"; done_step build FAILED; exit 1; fi
fi

if [[ "$STAGE" == 1 ]]; then
  step "load and registration check (.ci/check_cuda_build.py)"
  if "$PYTHON" .ci/check_cuda_build.py > "$WORK/check.log" 2>&1; then done_step check ok; else done_step check FAILED; fi
  cat "$WORK/check.log"

  # Route correctness first (xdist hands tests out in this order), then the Triton kernels, then
  # refine_model on CUDA (the one GPU test of the svs package).
  GPU_TESTS=(${SVS_GPU_TESTS:-tests/csrc/test_cuda.py tests/csrc tests/svs_kernels/test_triton_ops.py
             tests/csrc/test_build.py::test_cuda_libraries_are_torchs
             tests/svs/test_model.py::test_refine_model_on_cuda_matches_cpu})
  LIMIT=$(( $(left) - 15 ))
  step "GPU tests, at most $LIMIT s: ${GPU_TESTS[*]}"
  if (( LIMIT < 30 )); then
    done_step tests "FAILED: no time left"
  else
    # SIGINT at the limit: pytest stops, reports and writes its junit XML; tests.jsonl is written
    # as each test ends (tests/conftest.py, SVS_TEST_LOG), so it survives even a kill.
    SVS_TEST_LOG="$WORK/tests.jsonl" timeout -s INT -k 10 "$LIMIT" \
      "$PYTHON" -m pytest "${GPU_TESTS[@]}" -q -p xdist -n "${SVS_TEST_WORKERS:-8}" --timeout 90 \
      --junitxml="$WORK/pytest.xml" -o junit_family=xunit2 > "$WORK/pytest.log" 2>&1
    rc=$?
    tail -n 15 "$WORK/pytest.log"
    case $rc in
      0) done_step tests ok ;;
      124|130|137) done_step tests "FAILED: stopped at the stage's time limit ($LIMIT s)" ;;
      *) done_step tests "FAILED: pytest exit $rc" ;;
    esac
  fi
  exit 0
fi

# Stage 2: the benchmark, one process per workload, most telling first; each under its own limit.
DEVICE_ARGS=(--device cuda --repeats "${SVS_BENCH_REPEATS:-5}" --max-run-s "${SVS_BENCH_MAX_RUN_S:-10}")
((DRY)) && DEVICE_ARGS+=(--dry-run)
PLAN="${SVS_BENCH_PLAN:-ddpm-cifar10-p50:60 stylegan2-base:60 llm-8b-p:120 tiny-batch:60}"  # workload:seconds
for plan in $PLAN; do
  wl="${plan%%:*}"
  limit="${plan##*:}"
  (( limit > $(left) - 15 )) && limit=$(( $(left) - 15 ))
  step "benchmark $wl, at most $limit s"
  if (( limit < 10 )); then done_step "bench $wl" "FAILED: no time left"; continue; fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout -s INT -k 10 "$limit" "$PYTHON" -m benchmarks.run "${DEVICE_ARGS[@]}" --workload "$wl" \
    --out "$WORK/bench-$wl" ${BENCH_ARGS:-} > "$WORK/bench-$wl.log" 2>&1
  rc=$?
  tail -n 3 "$WORK/bench-$wl.log"
  case $rc in
    0) done_step "bench $wl" ok ;;
    124|130|137) done_step "bench $wl" "FAILED: cut off at $limit s (the rows measured before are kept)" ;;
    *) done_step "bench $wl" "FAILED: exit $rc" ;;
  esac
done
step "merged table"
shopt -s nullglob
parts=()
for plan in $PLAN; do
  parts+=("$WORK/bench-${plan%%:*}"/cuda-*.json)  # in the plan's order
done
if (( ${#parts[@]} )) && "$PYTHON" -m benchmarks.run --merge "${parts[@]}" --out "$WORK/merged" \
     > "$WORK/merge.log" 2>&1; then
  done_step merge ok
else
  done_step merge "FAILED: $( ((${#parts[@]})) && echo 'see merge.log' || echo 'no workload wrote a result')"
fi
exit 0
