#!/usr/bin/env bash
# A mirror of the GPU machine's software stack on a machine without a GPU (called by .ci/run):
# Python 3.12 and exactly the image's packages (constraints-cu130.txt: torch 2.11.0+cu130, triton
# 3.6, numpy 2.5.2, transformers, peft, cupy; no diffusers, no torch-pruning), in .venv-cu130; nvcc
# 13.0 of this machine. In it, without a GPU or a driver:
#   1. the rehearsal of the GPU check: `.ci/gpu_check.sh 1 --dry-run` (CUDA_HOME from nvcc + the
#      wheels (.ci/cuda_home.sh), the setup.py build with the CUDA kernel, .ci/check_cuda_build.py:
#      every undefined symbol resolves, `import svs_kernels` works, the CUDA kernels of the svs::
#      operators are registered, libcusolver/libcublas are torch's; the GPU tests, which skip here)
#      and `.ci/gpu_check.sh 2 --dry-run` (the benchmark's workloads and files, nothing timed); for
#      each, .ci/gpu_report.py check-out: at most 8 files, none over 16 MiB or deeper than two
#      folders, and the summary is the last thing printed;
#   2. the CMake library with -DSVS_CUDA=ON, and the same check of it;
#   3. the whole test suite (python -m pytest tests -q) on torch 2.11, the CMake test on that library,
#      with the core alone: the extras' modules (diffusers, torch_pruning, sklearn, matplotlib) made
#      unimportable by .ci/core_only/sitecustomize.py, so every test that needs one must skip
#      (issue 21, item 2); the main CI run (.ci/run) has them all and runs those tests.
# The mirror builds in a copy of the work tree (.cache/mirror-src), so the CPU build of .venv in the
# tree (svs_kernels/_C*.so, cmake-build/) is left alone. Results: .cache/mirror-results/.
# Every part runs even if one before it failed; the exit status is non-zero if any failed.
# MAX_JOBS (default 2) bounds the compile jobs; SVS_MIRROR_PYTHON names the Python 3.12.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-cu130"
SRC="$ROOT/.cache/mirror-src"
RESULTS="$ROOT/.cache/mirror-results"
export MAX_JOBS="${MAX_JOBS:-2}"
T0=$SECONDS
FAILED=()
part() { echo; echo "== mirror [$((SECONDS - T0)) s] $*"; }
quiet_pip() {  # pip, without the warnings about this machine's unused local index folders
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# Python 3.12: $SVS_MIRROR_PYTHON, python3.12 on PATH, or pyenv's.
PY312="${SVS_MIRROR_PYTHON:-}"
for cand in python3.12 "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n1)"; do
  [[ -z "$PY312" && -n "$cand" ]] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && PY312="$cand"
done
[[ -n "$PY312" ]] || { echo "gpu_mirror: Python 3.12 not found (set SVS_MIRROR_PYTHON)" >&2; exit 2; }

part "venv: $VENV ($("$PY312" --version), constraints-cu130.txt)"
[[ -x "$VENV/bin/python" ]] || "$PY312" -m venv "$VENV" || exit 1
quiet_pip install -q -c constraints-cu130.txt pip || exit 1
# Every package of the image and nothing else (the constraints file is the list); a package left
# from an older list is removed, so the mirror cannot hide one the image lacks.
quiet_pip install -q -r constraints-cu130.txt || exit 1
extra="$(comm -23 <("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | sed 's/==.*//' | tr 'A-Z_' 'a-z-' | sort) \
                 <(sed -n 's/==.*//p' constraints-cu130.txt | tr 'A-Z_' 'a-z-' | sort))"
extra="$(grep -vx 'svs-kernels' <<<"$extra" || true)"
[[ -z "$extra" ]] || quiet_pip uninstall -q -y $extra || exit 1
"$VENV/bin/python" -c 'import torch, triton, numpy; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| triton", triton.__version__, "| numpy", numpy.__version__)'

part "copy of the work tree: $SRC"
mkdir -p "$SRC"
# Sources are replaced (a file deleted here must not be built there); build folders stay, for ninja.
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build ! -name cmake-build -exec rm -rf {} +
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$SRC"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

# The rehearsal: both stages of the GPU check as the GPU machine runs them (dry: the GPU steps
# replaced), each into its own $OUT, then what the device would bring back is checked.
for stage in 1 2; do
  part "1.$stage .ci/gpu_check.sh $stage --dry-run (OUT: $RESULTS/stage$stage)"
  (cd "$SRC" && OUT="$RESULTS/stage$stage" PYTHON="$VENV/bin/python" MAX_JOBS="$MAX_JOBS" SVS_TEST_WORKERS=2 \
     SVS_STAGE_S=1500 SVS_BUILD_S=1200 bash .ci/gpu_check.sh "$stage" --dry-run > "$RESULTS/stage$stage.out" 2>&1) \
    || FAILED+=("gpu_check $stage --dry-run")
  tail -n 25 "$RESULTS/stage$stage.out"
  "$VENV/bin/python" .ci/gpu_report.py check-out "$RESULTS/stage$stage" "$RESULTS/stage$stage.out" \
    || FAILED+=("stage $stage output")
done
CUDA_HOME="$(bash .ci/cuda_home.sh "$VENV/bin/python")" || exit 1  # the same home, for CMake
export CUDA_HOME

part "2. CMake -DSVS_CUDA=ON (log: $RESULTS/cmake.log)"
if { "$VENV/bin/cmake" -S "$SRC" -B "$SRC/cmake-build" -DSVS_CUDA=ON \
       -DCMAKE_PREFIX_PATH="$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
       -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCUDAToolkit_ROOT="$CUDA_HOME" -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" \
     && "$VENV/bin/cmake" --build "$SRC/cmake-build" -j "$MAX_JOBS"; } > "$RESULTS/cmake.log" 2>&1; then
  "$VENV/bin/python" .ci/check_cuda_build.py --lib "$SRC/cmake-build/libsvs_ops.so" || FAILED+=("check of the CMake library")
else
  tail -n 40 "$RESULTS/cmake.log"
  FAILED+=("CMake build")
fi

part "3. tests on torch 2.11, the core alone (PYTHONPATH=.ci/core_only): python -m pytest tests -q"
(cd "$SRC" && PYTHONPATH="$SRC/.ci/core_only" SVS_CMAKE_LIB="$SRC/cmake-build/libsvs_ops.so" \
   "$VENV/bin/python" -m pytest tests -q) \
  || FAILED+=("pytest (core alone)")

echo
if (( ${#FAILED[@]} )); then
  echo "gpu_mirror: FAILED: ${FAILED[*]} ($((SECONDS - T0)) s; results: $RESULTS)"
  exit 1
fi
echo "gpu_mirror: OK ($((SECONDS - T0)) s; results: $RESULTS)"
