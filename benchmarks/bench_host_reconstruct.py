#!/usr/bin/env python
"""Host cost of the Triton reconstruction: the launch plan and tables, with every launch stubbed.

Runs on the CPU (no GPU, no interpreter): svs_kernels.triton_ops.reconstruct.reconstruct with the
sigma-map, staging and GEMM launches, the host-to-device copy and the device check replaced by
no-ops, on CPU tensors shaped and laid out as the C++ caller hands them over (U column-major as
cuSOLVER writes it, s contiguous, Vh row-major, out row-major views of one buffer). Measured:
  python    reconstruct() called directly (what the issue's 100 us target is about): the plan
            operator, the workspace, the relocation of the table and the (stubbed) launches
  python, C++-held  the same while a C++ object holds a reference to every tensor, as the vectors
            of the C++ CUDA kernel that calls svs::_reconstruct do. Where only Python holds a
            tensor, torch increments its Python object when the operator's arguments take the
            first C++ reference and, after the call, decrements it under the GIL the operator
            released, once per tensor: a cost the production call does not pay
  operator  torch.ops.svs._reconstruct with the Triton kernel registered for the CPU dispatch key:
            adds the dispatcher and the wrapping of 4 x G tensors into Python objects, as the C++
            CUDA kernel's call does
  plan      svs::_reconstruct_plan alone (csrc/launch_table.cpp: checks, tables; most of it the
            conversion of the 4 x G tensors into the operator's arguments)
  attributes  reading data_ptr, size, stride, dtype and device of the 4 x G tensors once each in
            Python: what building the tables in Python cost before any arithmetic
Medians of --repeats calls after a warm-up. Example:
  python benchmarks/bench_host_reconstruct.py --workload ddpm-cifar10-p50
"""
import argparse
import os
import statistics
import sys
import time
from typing import List

os.environ.pop("TRITON_INTERPRET", None)  # the compiled configs, as on a GPU

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import svs_kernels  # noqa: E402,F401
from benchmarks.workloads import get_workload  # noqa: E402
from svs_kernels import triton_ops  # noqa: E402
from svs_kernels.triton_ops import gemm, reconstruct, stage  # noqa: E402

WORKLOADS = ("ddpm-cifar10-p50", "sd15-unet")


def factors(shapes):
    """U (column-major), s, Vh (row-major), out views, for (m, n) shapes, k = min(m, n); meta only
    matters, so the tensors are small-valued but real (their data_ptr are read)."""
    u, s, vh = [], [], []
    for m, n in shapes:
        k = min(m, n)
        u.append(torch.empty(k, m).t())
        s.append(torch.empty(k))
        vh.append(torch.empty(k, n))
    buf = torch.empty(sum(m * n for m, n in shapes))
    out, at = [], 0
    for m, n in shapes:
        out.append(buf[at:at + m * n].view(m, n))
        at += m * n
    return u, s, vh, out


class CppHeld(torch.nn.Module):
    """Holds a C++ reference to each tensor (a TorchScript list attribute) while it lives."""

    def __init__(self, tensors: List[torch.Tensor]):
        super().__init__()
        self.tensors = tensors

    def forward(self) -> int:
        return len(self.tensors)


def median_us(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="ddpm-cifar10-p50", choices=WORKLOADS)
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    shapes = get_workload(args.workload).dims
    u, s, vh, out = factors(shapes)
    launches = []
    stubs = {(reconstruct, "launch_map"): lambda *a, **k: launches.append("map"),
             (stage, "launch"): lambda *a, **k: launches.append("stage"),
             (gemm, "launch"): lambda *a, **k: launches.append("gemm"),
             (reconstruct, "to_device"): lambda t, device: t,
             (reconstruct, "check_device"): lambda device, what: None,
             (reconstruct, "num_programs"): lambda device: 132}
    saved = {key: getattr(*key) for key in stubs}
    for (mod, name), fn in stubs.items():
        setattr(mod, name, fn)
    try:
        reconstruct.reconstruct(u, s, vh, out, 0, 1.0)
        per_call = list(launches)
        py = median_us(lambda: reconstruct.reconstruct(u, s, vh, out, 0, 1.0), args.repeats)
        held = torch.jit.script(CppHeld(u + s + vh + out))
        py_held = median_us(lambda: reconstruct.reconstruct(u, s, vh, out, 0, 1.0), args.repeats)
        del held
        lib = triton_ops.register("CPU")
        try:
            op = median_us(lambda: torch.ops.svs._reconstruct(u, s, vh, out, 0, 1.0), args.repeats)
        finally:
            lib._destroy()
            triton_ops._LIBS.remove(lib)
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    print(f"{args.workload}: {len(shapes)} matrices, launches per call {per_call}")
    print(f"  python   reconstruct(): {py:8.1f} us (median of {args.repeats})")
    print(f"  python   reconstruct(), tensors C++-held: {py_held:8.1f} us")
    print(f"  operator svs::_reconstruct: {op:8.1f} us")
    plan_args = (u, s, vh, out, 1.0, gemm.tiles("float32"), gemm.tiles("float64"), reconstruct._PLANES, 132,
                 stage.BLOCK_R, stage.BLOCK_C, reconstruct.WORKSPACE_BYTES)
    plan = median_us(lambda: torch.ops.svs._reconstruct_plan.default(*plan_args), args.repeats)
    print(f"  plan     svs::_reconstruct_plan: {plan:8.1f} us")
    T = torch.Tensor
    tensors = [t for ts in (u, s, vh, out) for t in ts]
    attrs = median_us(lambda: [list(map(f, tensors)) for f in (T.data_ptr, T.size, T.stride, T.get_device,
                                                                 lambda t: t.dtype)], args.repeats)
    print(f"  attributes of the {len(tensors)} tensors: {attrs:8.1f} us")
    print(f"  load average {os.getloadavg()[0]:.1f}")
    print(f"  torch {torch.__version__}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
