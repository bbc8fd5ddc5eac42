#!/usr/bin/env python
"""Compile every Triton kernel x config x dtype x precision that svs_kernels.triton_ops can launch,
for sm_90 (H100), and fail on any register spill or compile error. Needs no GPU: triton compiles
with its own ptxas, and ptxas -v on each kernel's PTX reports registers, stack frame and spill
stores/loads (both must be 0). GEMMs must use tensor cores (TF32 or DMMA instructions in the PTX).

  python benchmarks/triton_compile_coverage.py              # the pinned triton (.venv)
  cd .cache/mirror-src && ../../.venv-cu130/bin/python benchmarks/triton_compile_coverage.py
                                                            # triton 3.6, the GPU machine's stack

Needs the built extension (svs_kernels._C of this Python: the map codes and the launch plan come
from it), so in the mirror it runs in the mirror's build tree. Prints one line per compile and
"ok N kernels" at the end; tests/svs_kernels/test_triton_compile.py runs it with the Python that
runs the tests (the pinned triton, and triton 3.6 in .ci/gpu_mirror.sh's test run).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, do not interpret

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import svs_kernels  # noqa: E402,F401  (the extension: the map codes and the launch plan come from it)
from svs_kernels.triton_ops import gemm, reconstruct, sigma_map, stage  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}
TORCH_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def jit_fn(fn):
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    return fn


def resources(ptx: str) -> dict:
    """ptxas -v of the kernel's PTX for sm_90a: registers, stack frame, spill stores/loads (bytes)."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path  # the ptxas triton itself uses for sm_90
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        log = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                             text=True, check=True).stderr
    res = {"REG": int(re.search(r"Used (\d+) registers", log).group(1))}
    res["STACK"], res["SPILL_ST"], res["SPILL_LD"] = (int(x) for x in re.search(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return res


def compile_one(fn, runtime_sig: dict, const: dict, num_warps: int = 4, num_stages: int = 3, must=()):
    sig = dict(runtime_sig, **{k: "constexpr" for k in const})
    c = triton.compile(ASTSource(fn=jit_fn(fn), signature=sig, constexprs=const), target=TARGET,
                       options=dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True))
    res = resources(c.asm["ptx"])
    ptx = c.asm["ptx"]
    res["mma"] = "wgmma" if "wgmma" in ptx else "dmma" if ".f64.f64.f64.f64" in ptx else "mma" if "mma.sync" in ptx else ""
    missing = [i for i in must if i not in c.asm["ptx"]]
    return res, missing


def cases():
    """(name, fn, runtime signature, constexprs, num_warps, num_stages, instructions the PTX must hold)."""
    tab = {"tab_ptr": "*i64", "G": "i32"}
    for op_dt, out_dt, mode, precision, nseg in reconstruct.launch_kinds():
        op = str(op_dt).split(".")[1]
        for c in gemm.CONFIGS[op]:
            for aligned in (True, False):
                # tensor cores: TF32 (wgmma or mma.sync), float64 DMMA (mma.sync ... f64.f64.f64.f64:
                # m8n8k4 with the pinned triton, m16n8k16 with triton 3.6)
                must = (".f64.f64.f64.f64",) if op == "float64" else ("tf32",)
                yield (f"gemm {op} out={TORCH_NAME[out_dt]} {precision} x{nseg} {tuple(c)} aligned={aligned}",
                       gemm._gemm_kernel, tab,
                       dict(OP_DT=TL[op_dt], OUT_DT=TL[out_dt], PRECISION=precision, NSEG=nseg, ALIGNED=aligned,
                            BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m),
                       c.num_warps, c.num_stages, must)
    staged = {(torch.float64, stage.COPY)} | {(torch.float32, m) for _, o, m, _, _ in reconstruct.launch_kinds()
                                              if m != stage.COPY}
    for dst, mode in sorted(staged, key=str):
        srcs = TL if dst == torch.float64 else [d for d in TL if d != torch.float64]  # f64 source => f64 compute
        for src in srcs:
            for layout in (0, 1, 2):
                yield (f"stage {TORCH_NAME[src]}->{TORCH_NAME[dst]} mode={mode} layout={layout}", stage._stage_kernel,
                       tab, dict(SRC_DT=TL[src], DST_DT=TL[dst], LAYOUT=layout, MODE=mode, BLOCK_R=stage.BLOCK_R,
                                 BLOCK_C=stage.BLOCK_C), 4, 3, ())
    for out in (torch.float32, torch.float64):  # the packed f(s) buffer has the compute dtype
        for s_dt in TL:
            for code in range(8):
                yield (f"sigma_map s={TORCH_NAME[s_dt]} out={TORCH_NAME[out]} map={code}", sigma_map._sigma_map_kernel,
                       {"tab_ptr": "*i64", "out_ptr": "*" + TORCH_NAME[out]},
                       dict(S_DT=TL[s_dt], MAP=code, BLOCK=sigma_map.BLOCK), 4, 3, ())


def main() -> int:
    print(f"triton {triton.__version__}, target sm_90", flush=True)
    bad, n, t0 = [], 0, time.time()
    only = sys.argv[1] if len(sys.argv) > 1 else ""  # a substring of the case names, to check a few
    for name, fn, sig, const, warps, stages, must in cases():
        if only not in name:
            continue
        t = time.time()
        try:
            res, missing = compile_one(fn, sig, const, warps, stages, must)
        except Exception as e:  # a compile error is a failure of this check, reported with the rest
            bad.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print("FAIL", bad[-1], flush=True)
            continue
        n += 1
        spill = res["SPILL_ST"] or res["SPILL_LD"]
        line = (f"{name}: REG {res['REG']} stack {res['STACK']} spill {res['SPILL_ST']}/{res['SPILL_LD']} "
                f"{res['mma']} ({time.time() - t:.1f} s)")
        if spill or missing:
            bad.append(line + (f" missing {missing}" if missing else " spills"))
        print(("FAIL " if spill or missing else "") + line, flush=True)
    print(f"{n} compiled in {time.time() - t0:.0f} s, {len(bad)} failures")
    for b in bad:
        print("FAIL", b)
    if not bad:
        print(f"ok {n} kernels")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
