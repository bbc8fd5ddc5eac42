#!/usr/bin/env bash
# Compile check of the CUDA kernel of svs::refine on a machine without a GPU (CI, CPU dev boxes).
#
#   bash tools/check_cuda_compiles.sh
#
# Needs: the project's Python environment with torch installed (a CPU build is fine), nvcc
# (CUDA 13.0; $CUDA_HOME/bin/nvcc, /usr/local/cuda/bin/nvcc or on PATH), network access to PyPI on
# the first run. It
#   (a) downloads pinned nvidia-cusolver / nvidia-cublas / nvidia-cusparse wheels (matching CUDA
#       13.0 Update 2) into a cache and unzips only their include directories (nvidia/cu13/include);
#   (b) creates a stand-in c10/cuda/impl/cuda_cmake_macros.h, which CPU builds of torch lack;
#   (c) nvcc -c every csrc/cuda/*.cu for sm_90 (-std=c++17);
#   (d) compiles every csrc/cuda/*.cpp with g++ -fsyntax-only against torch's headers, the CUDA
#       toolkit and the wheel headers, with -DSVS_WITH_CUDA (-std=c++20, as torch's
#       cpp_extension builds them).
# Exits non-zero on the first compile error. Cache: $SVS_CUDA_CACHE, default <repo>/.cache/cuda.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="${SVS_CUDA_CACHE:-$ROOT/.cache/cuda}"
# The project's environment: $PYTHON, else the active virtualenv, else ./.venv, else python on PATH.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -z "${VIRTUAL_ENV:-}" && -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
# CUDA 13.0 Update 2 component versions (the nvcc 13.0.88 toolkit): cuBLAS 13.1.0.3,
# cuSOLVER 12.0.4.66, cuSPARSE 12.6.3.3 (ATen's CUDAContext.h includes cusparse.h).
WHEELS=("nvidia-cusolver==12.0.4.66" "nvidia-cublas==13.1.0.3" "nvidia-cusparse==12.6.3.3")
ARCH="-gencode=arch=compute_90,code=sm_90"

mkdir -p "$CACHE"
if [[ "$CACHE" == "$ROOT/.cache"* && ! -f "$ROOT/.cache/.gitignore" ]]; then
  mkdir -p "$ROOT/.cache" && echo '*' > "$ROOT/.cache/.gitignore"  # keep the cache out of git
fi

# ---- toolchain -----------------------------------------------------------------------------------
NVCC=""
for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
  if [[ -n "$cand" && -x "$cand" ]]; then NVCC="$cand"; break; fi
done
[[ -n "$NVCC" ]] || { echo "check_cuda_compiles: nvcc not found (set CUDA_HOME)" >&2; exit 2; }
# The toolkit's include directory, as nvcc itself resolves it (nvcc may be a wrapper script).
CUDA_INC=""
for d in $("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES=//p' | tr -d '"' | sed 's/-I//g'); do
  if [[ -f "$d/cuda_runtime.h" ]]; then CUDA_INC="$d"; break; fi
done
[[ -n "$CUDA_INC" ]] || { echo "check_cuda_compiles: cannot find cuda_runtime.h of $NVCC" >&2; exit 2; }
CXX="${CXX:-g++}"

# ---- (a) library headers from the pinned wheels ----------------------------------------------------
WHEEL_DIR="$CACHE/wheels"
WHEEL_INC_ROOT="$CACHE/include"
STAMP="$WHEEL_INC_ROOT/.stamp"
WANT="${WHEELS[*]}"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "== downloading ${WANT} (headers only are kept)"
  mkdir -p "$WHEEL_DIR"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEEL_DIR" "${WHEELS[@]}"
  rm -rf "$WHEEL_INC_ROOT"
  mkdir -p "$WHEEL_INC_ROOT"
  for spec in "${WHEELS[@]}"; do
    name="${spec%%==*}"; version="${spec##*==}"
    whl="$(ls "$WHEEL_DIR"/"${name//-/_}"-"$version"-*.whl | head -n1)"
    "$PYTHON" - "$whl" "$WHEEL_INC_ROOT" <<'EOF'
import sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    members = [n for n in z.namelist() if "/include/" in n and not n.endswith("/")]
    if not members:
        sys.exit(f"no include directory in {whl}")
    z.extractall(dest, members)
EOF
  done
  # The headers are all that is used: drop the (large) wheels.
  rm -f "$WHEEL_DIR"/*.whl
  echo "$WANT" > "$STAMP"
fi
WHEEL_INC="$WHEEL_INC_ROOT/nvidia/cu13/include"
[[ -f "$WHEEL_INC/cusolverDn.h" ]] || { echo "check_cuda_compiles: $WHEEL_INC/cusolverDn.h missing" >&2; exit 2; }

# ---- (b) stand-in for the header CPU builds of torch lack ----------------------------------------
STUB="$CACHE/stub-include"
mkdir -p "$STUB/c10/cuda/impl"
[[ -f "$STUB/c10/cuda/impl/cuda_cmake_macros.h" ]] || echo '#pragma once' > "$STUB/c10/cuda/impl/cuda_cmake_macros.h"

mapfile -t TORCH_INC < <("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print("\n".join(include_paths()))')

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
shopt -s nullglob
CU_FILES=(csrc/cuda/*.cu)
CPP_FILES=(csrc/cuda/*.cpp)
if (( ${#CU_FILES[@]} + ${#CPP_FILES[@]} == 0 )); then
  echo "check_cuda_compiles: no sources under csrc/cuda" >&2; exit 1
fi

echo "== nvcc: $("$NVCC" --version | tail -n1)"
# ---- (c) device code ------------------------------------------------------------------------------
for f in "${CU_FILES[@]}"; do
  echo "== nvcc -c $ARCH -std=c++17 $f"
  "$NVCC" -c $ARCH -std=c++17 -O2 -Xcompiler -Wall,-Wextra -Icsrc -Icsrc/cuda -isystem "$WHEEL_INC" \
    -o "$OUT/$(basename "$f").o" "$f"
done

# ---- (d) torch binding ----------------------------------------------------------------------------
# Third-party headers as system headers: -Wall applies to the project's code only.
INCS=(-Icsrc -Icsrc/cuda -isystem "$STUB")
for d in "${TORCH_INC[@]}"; do INCS+=(-isystem "$d"); done
INCS+=(-isystem "$CUDA_INC" -isystem "$WHEEL_INC")
for f in "${CPP_FILES[@]}"; do
  echo "== $CXX -fsyntax-only -std=c++20 -DSVS_WITH_CUDA $f"
  "$CXX" -fsyntax-only -std=c++20 -DSVS_WITH_CUDA -Wall -Wextra -Wno-unused-parameter \
    "${INCS[@]}" "$f"
done

echo "check_cuda_compiles: OK (${#CU_FILES[@]} .cu compiled for sm_90, ${#CPP_FILES[@]} .cpp checked)"
