#!/usr/bin/env bash
# Creates .venv with the pinned dependencies (constraints.txt) and builds the package in it.
# torch 2.13.0 is the CPU build; the build uses the installed torch (--no-build-isolation), since
# an isolated build would pull a multi-GB CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q -c constraints.txt pip
python -m pip install -q -c constraints.txt -r requirements.txt
python -m pip install -q -c constraints.txt --no-build-isolation -e .
python -c "import svs, svs_kernels, torch; print('svs', svs.__version__, '| torch', torch.__version__, '| CUDA kernel:', svs_kernels.has_cuda_kernel())"
