#!/usr/bin/env bash
# Assembles a CUDA_HOME from nvcc and the CUDA libraries that torch itself uses, prints its path.
#
#   CUDA_HOME="$(bash .ci/cuda_home.sh PYTHON [DEST])"
#
# Why: PyPI's CUDA builds of torch bring the CUDA libraries and headers as nvidia-* wheels
# (site-packages/nvidia/cu13/{include,lib}), and a machine's nvcc often comes without cuSOLVER and
# cuBLAS, or with other copies of them. Building against a home made of nvcc plus the wheels links
# the extension to exactly the libraries torch loads. Everything is a symlink:
#   bin/*, nvvm   -> the toolkit of nvcc ($CUDA_HOME/bin/nvcc, /usr/local/cuda-13.0, /usr/local/cuda,
#                    or nvcc on PATH); nvcc.profile comes along, so nvcc takes DEST as its TOP
#   include/*     -> the toolkit's headers, then the wheels' headers the toolkit lacks (cusolverDn.h, ...)
#   lib64/*       -> the wheels' libraries first, then the toolkit's, plus unversioned libX.so links
#                    where the wheels only ship libX.so.N, so that -lcusolver / -lcublas link
# DEST defaults to <repo>/.cache/cuda-home-cu<torch's CUDA major>. Rebuilt on every call (cheap).
set -euo pipefail
PYTHON="${1:?usage: cuda_home.sh PYTHON [DEST]}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

read -r CUDA_VER WHEEL_DIR < <("$PYTHON" - <<'EOF'
import glob, os, sys, torch
if torch.version.cuda is None:
    sys.exit("cuda_home: torch %s is not a CUDA build" % torch.__version__)
major = torch.version.cuda.split(".")[0]
site = os.path.dirname(os.path.dirname(torch.__file__))
hits = [d for d in [os.path.join(site, "nvidia", "cu" + major)] if glob.glob(d + "/lib/libcusolver.so.*")]
print(torch.version.cuda, hits[0] if hits else "-")
EOF
)
[[ "$WHEEL_DIR" != "-" ]] || { echo "cuda_home: no nvidia/cu${CUDA_VER%%.*} wheel libraries beside torch" >&2; exit 2; }
DEST="${2:-$ROOT/.cache/cuda-home-cu${CUDA_VER%%.*}}"

NVCC=""
for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "/usr/local/cuda-${CUDA_VER%%.*}.${CUDA_VER#*.}/bin/nvcc" \
            /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
  [[ -n "$cand" && -x "$cand" && "$cand" != "$DEST/bin/nvcc" ]] && { NVCC="$(readlink -f "$cand")"; break; }
done
[[ -n "$NVCC" ]] || { echo "cuda_home: nvcc not found (set CUDA_HOME)" >&2; exit 2; }
TK="$(dirname "$(dirname "$NVCC")")"
NVCC_VER="$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
[[ "${NVCC_VER%%.*}" == "${CUDA_VER%%.*}" ]] || {
  echo "cuda_home: nvcc $NVCC_VER ($NVCC) does not match torch's CUDA $CUDA_VER" >&2; exit 2; }

rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/include" "$DEST/lib64"
ln -s "$TK"/bin/* "$DEST/bin/"
ln -s "$TK/nvvm" "$DEST/nvvm"
link_missing() {  # link_missing SRC_DIR DEST_DIR: symlink each entry of SRC_DIR not yet in DEST_DIR
  local e
  for e in "$1"/*; do [[ -e "$2/$(basename "$e")" ]] || ln -s "$e" "$2/"; done
}
link_missing "$TK/include" "$DEST/include"
link_missing "$WHEEL_DIR/include" "$DEST/include"
link_missing "$WHEEL_DIR/lib" "$DEST/lib64"
for so in "$WHEEL_DIR"/lib/lib*.so.*; do  # libcusolver.so.12 -> also libcusolver.so
  base="$(basename "$so")"; plain="${base%%.so.*}.so"
  [[ -e "$DEST/lib64/$plain" ]] || ln -s "$so" "$DEST/lib64/$plain"
done
for d in "$TK/lib64" "$TK/lib" "$TK/targets/x86_64-linux/lib"; do
  if [[ -d "$d" ]]; then link_missing "$d" "$DEST/lib64"; fi
done
ln -s lib64 "$DEST/lib"
echo "$DEST"
