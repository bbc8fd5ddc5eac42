#!/usr/bin/env python
"""Grouped Triton reconstruction W'_i = U_i diag(f(s_i)) Vh_i vs a per-matrix torch composition (GPU only).

For each workload (benchmarks/workloads.py) and output dtype it builds random U, s, Vh of every matrix's
thin-SVD shape (m, n) -> U (m, k), s (k,), Vh (k, n), k = min(m, n), float32 as the C++ kernel
hands them over, and measures in the same run:
  triton          svs_kernels.triton_ops.reconstruct: sigma-map, staging and grouped GEMM launches,
                  precision by output dtype (3xTF32 for float32, TF32 for bfloat16/float16); the
                  config from the shape rule (no autotuning: the first call only compiles)
  torch-fp32      per matrix torch.matmul(U * f(s), Vh) with full-float32 matmul
  torch-tf32      the same with TF32 matmul allowed (fast, ~1e-3 accurate: context only)
times are triton.testing.do_bench medians (L2 flushed between runs). Each row also has the
max relative Frobenius error against a float64 reference (first matrix of every distinct shape),
the number of GPU kernels one call launches (torch.profiler), and the floor:
  bytes floor  = (U, s, Vh read + W written) / copy bandwidth measured here (large device copy)
  flops floor  = sum 2 m n k / matmul rate measured here (torch.matmul of an 8192 square: float32
                 for torch-fp32, TF32 x 3 for triton into float32, TF32 for triton into 16-bit
                 outputs and torch-tf32)
Results: benchmarks/results/reconstruct-<device>-<date>.{json,md}, with device, versions, command.

Needs a CUDA GPU, triton, and the svs_kernels package importable (its compiled extension built).
One call reports the fraction of the floor per workload and output dtype:
  python benchmarks/bench_reconstruct.py --workloads llm-8b-p,sd15-unet,ddpm-cifar10-p50
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------------------
# workloads: the (m, n) of the flattened weights (shape[0], -1) SVS scales, from benchmarks/workloads.py
# (the DDPM and SD 1.5 shapes are data there, benchmarks/shapes/, so no diffusers is needed)
WORKLOADS = ("llm-8b-p", "sd15-unet", "ddpm-cifar10-p50")


def workload_shapes(name: str, args) -> Tuple[List[Tuple[int, int]], str]:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks.workloads import LLM_PROJ, get_workload

    if name == "llm-8b-p" and args.llm_blocks != 32:
        shapes = [(m, n) for _ in range(args.llm_blocks) for _, m, n in LLM_PROJ]
        return shapes, (f"{args.llm_blocks} blocks x (q, o 3072x3072; k, v 1024x3072; gate, up 9216x3072; "
                        "down 3072x9216)")
    if name not in WORKLOADS:
        raise SystemExit(f"unknown workload {name!r}; expected one of {', '.join(WORKLOADS)}")
    w = get_workload(name)
    return [tuple(d) for d in w.dims], f"benchmarks.workloads: {w.description}"


# ------------------------------------------------------------------------------------------------
# measurement helpers


def bench(fn, est_ms: float) -> float:
    """do_bench median (ms); rep sized for >= ~20 runs, at least 100 ms, at most 20 s."""
    import triton.testing

    rep = min(20000.0, max(100.0, 20 * est_ms))
    return float(triton.testing.do_bench(fn, warmup=max(25.0, 2 * est_ms), rep=rep, return_mode="median"))


def time_once(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def count_kernels(fn) -> int:
    try:
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.lower().startswith(("memcpy", "memset")))
    except Exception:
        return -1


def measure_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted)."""
    n = (2 << 30) // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), 1.0)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3)


def measure_matmul_rate(tf32: bool, size: int = 8192) -> float:
    """FLOP/s of torch.matmul of a float32 square, with or without TF32."""
    a = torch.randn(size, size, device="cuda")
    b = torch.randn(size, size, device="cuda")
    c = torch.empty(size, size, device="cuda")
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        ms = bench(lambda: torch.matmul(a, b, out=c), 10.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * size**3 / (ms * 1e-3)


def torch_map(s: torch.Tensor, name: str) -> torch.Tensor:
    """f(s) with torch ops, 0 where s <= 0 (what a user's per-matrix loop computes)."""
    pos = s > 0
    safe = torch.where(pos, s, torch.ones_like(s))
    if name == "sqrt":
        f = safe.sqrt()
    elif name == "log1p":
        f = safe.log1p()
    elif name == "abslog":
        f = safe.log().abs()
    elif name.startswith("power:"):
        f = safe.pow(float(name.split(":", 1)[1]))
    elif name == "ones":
        f = torch.ones_like(safe)
    elif name == "spectral":
        f = safe / s.max()
    elif name == "square":
        f = safe * safe
    else:
        f = safe
    return torch.where(pos, f, torch.zeros_like(f))


def max_rel_error(u, s, vh, out, name, shapes) -> float:
    """Max over the first matrix of every distinct shape of ||W - W_ref||_F / ||W_ref||_F, float64 ref."""
    seen, worst = set(), 0.0
    for i, shape in enumerate(shapes):
        if shape in seen:
            continue
        seen.add(shape)
        ref = (u[i].double() * torch_map(s[i].double(), name)) @ vh[i].double()
        err = ((out[i].double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()
        worst = max(worst, err)
        del ref
    return worst


# ------------------------------------------------------------------------------------------------


def run_workload(name: str, out_dtype_name: str, args, R, rates) -> Dict:
    shapes, source = workload_shapes(name, args)
    out_dtype = getattr(torch, out_dtype_name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    u, s, vh, out = [], [], [], []
    for m, n in shapes:
        k = min(m, n)
        u.append(torch.randn(m, k, device="cuda", generator=gen) / math.sqrt(m))
        s.append((torch.rand(k, device="cuda", generator=gen) * 2).sort(descending=True).values)
        vh.append(torch.randn(k, n, device="cuda", generator=gen) / math.sqrt(n))
        out.append(torch.empty(m, n, device="cuda", dtype=out_dtype))
    flops = sum(2 * m * n * min(m, n) for m, n in shapes)
    nbytes = sum(4 * (m * min(m, n) + min(m, n) + min(m, n) * n) + out_dtype.itemsize * m * n for m, n in shapes)
    bytes_floor_ms = nbytes / rates["bandwidth_Bps"] * 1e3
    row = {
        "workload": name, "source": source, "matrices": len(shapes), "distinct_shapes": len(Counter(shapes)),
        "max_shape": list(max(shapes, key=lambda x: x[0] * x[1])), "map": args.map, "out_dtype": out_dtype_name,
        "gflop": flops / 1e9, "gbytes": nbytes / 1e9, "bytes_floor_ms": bytes_floor_ms, "methods": {},
    }
    print(f"== {name} -> {out_dtype_name}: {len(shapes)} matrices, {flops / 1e12:.3f} TFLOP, {nbytes / 1e9:.2f} GB ({source})", flush=True)

    def record(method, fn, flops_rate_key, flop_factor=1.0):
        first_ms = time_once(fn)  # the Triton path compiles here (no autotuning)
        est = time_once(fn)
        med = bench(fn, est)
        err = max_rel_error(u, s, vh, out, args.map, shapes)
        flops_floor_ms = flop_factor * flops / rates[flops_rate_key] * 1e3
        floor = max(bytes_floor_ms, flops_floor_ms)
        r = {"median_ms": med, "first_call_ms": first_ms, "max_rel_err_fp64": err,
             "kernels_per_call": count_kernels(fn),
             "flops_floor_ms": flops_floor_ms, "floor_ms": floor, "fraction_of_floor": floor / med,
             "tflops": flops / (med * 1e-3) / 1e12}
        row["methods"][method] = r
        print(f"  {method:14s} median {med:9.3f} ms  first {first_ms:9.1f} ms  floor {floor:8.3f} ms "
              f"({100 * floor / med:5.1f} %)  err {err:.2e}  kernels {r['kernels_per_call']}", flush=True)

    split = out_dtype in (torch.float32, torch.float64)  # 3xTF32; 16-bit outputs: TF32
    record("triton", lambda: R.reconstruct(u, s, vh, out, args.map), "tf32_flops", 3.0 if split else 1.0)
    m_, n_ = (torch.tensor([x[i] for x in shapes]).numpy() for i in (0, 1))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    row["triton_config"] = R.gemm.choose_config("float32", m_, n_, sms)._asdict()  # the shape rule's pick

    def torch_loop():
        for ui, si, vi, oi in zip(u, s, vh, out):
            prod = ui * torch_map(si, args.map)
            if oi.dtype == torch.float32 and oi.is_contiguous():
                torch.matmul(prod, vi, out=oi)
            else:
                oi.copy_(prod @ vi)

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        record("torch-fp32", torch_loop, "fp32_flops")
        if not args.no_torch_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            record("torch-tf32", torch_loop, "tf32_flops")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    base = row["methods"]["torch-fp32"]["median_ms"]
    for r in row["methods"].values():
        r["speedup_vs_torch_fp32"] = base / r["median_ms"]
    del u, s, vh, out
    torch.cuda.empty_cache()
    return row


def versions() -> Dict:
    import triton

    v = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
         "cuda_runtime": torch.version.cuda}
    try:
        v["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception:
        v["driver"] = None
    try:
        v["git_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                                         timeout=30).stdout.strip() or None
    except Exception:
        v["git_commit"] = None
    return v


def write_markdown(path: str, res: Dict) -> None:
    lines = [f"# Grouped reconstruction: {res['device']['name']}", "",
             f"- date: {res['date']}", f"- command: `{res['command']}`",
             f"- versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
             f"- measured: copy bandwidth {res['rates']['bandwidth_Bps'] / 1e12:.2f} TB/s, "
             f"float32 matmul {res['rates']['fp32_flops'] / 1e12:.1f} TFLOP/s, "
             f"TF32 matmul {res['rates']['tf32_flops'] / 1e12:.1f} TFLOP/s",
             "- floor = max(bytes / bandwidth, flops / matmul rate); triton into float32 (3xTF32) counts 3 TF32 "
             "products per flop", "",
             "| workload | out | matrices | GFLOP | GB | method | median ms | first call ms | floor ms | % of floor "
             "| TFLOP/s | speedup vs torch-fp32 | max rel err | kernels/call |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in res["workloads"]:
        for mname, r in w["methods"].items():
            lines.append(f"| {w['workload']} | {w['out_dtype']} | {w['matrices']} | {w['gflop']:.1f} | {w['gbytes']:.2f} | {mname} | "
                         f"{r['median_ms']:.3f} | {r['first_call_ms']:.1f} | {r['floor_ms']:.3f} | "
                         f"{100 * r['fraction_of_floor']:.1f} | {r['tflops']:.1f} | {r['speedup_vs_torch_fp32']:.2f} | "
                         f"{r['max_rel_err_fp64']:.2e} | {r['kernels_per_call']} |")
    lines += ["", "GEMM config of the shape rule (svs_kernels/triton_ops/gemm.py choose_config):", ""]
    for w in res["workloads"]:
        lines.append(f"- {w['workload']} -> {w['out_dtype']}: {json.dumps(w['triton_config'])}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--map", default="sqrt")
    p.add_argument("--out-dtypes", default="float32,bfloat16,float16",
                   help="output dtypes (the precision follows: float32 3xTF32, 16-bit TF32)")
    p.add_argument("--llm-blocks", type=int, default=32, help="blocks of llm-8b-p (32: ~35 GB of fp32 operands)")
    p.add_argument("--no-torch-tf32", action="store_true")
    p.add_argument("--results-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args()

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("bench_reconstruct.py: unset TRITON_INTERPRET; this benchmark measures compiled kernels on a GPU")
    if not torch.cuda.is_available():
        sys.exit("bench_reconstruct.py: no CUDA device (torch.cuda.is_available() is False); "
                 "this benchmark measures GPU kernels only")
    try:
        import svs_kernels  # noqa: F401
        from svs_kernels.triton_ops import reconstruct as R
    except Exception as e:
        sys.exit(f"bench_reconstruct.py: cannot import svs_kernels.triton_ops ({e!r}); build the extension "
                 "(pip install --no-build-isolation -e .) and install triton")

    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}, {props.multi_processor_count} SMs; measuring bandwidth and matmul rates", flush=True)
    rates = {"bandwidth_Bps": measure_bandwidth(), "fp32_flops": measure_matmul_rate(False),
             "tf32_flops": measure_matmul_rate(True)}
    print(f"  copy {rates['bandwidth_Bps'] / 1e12:.2f} TB/s, fp32 {rates['fp32_flops'] / 1e12:.1f} TFLOP/s, "
          f"tf32 {rates['tf32_flops'] / 1e12:.1f} TFLOP/s", flush=True)

    rows = [run_workload(w, d, args, R, rates) for w in args.workloads.split(",") if w
            for d in args.out_dtypes.split(",") if d]
    now = datetime.datetime.now(datetime.timezone.utc)
    res = {
        "benchmark": "reconstruct", "date": now.isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "device": {"name": props.name, "sm_count": props.multi_processor_count,
                   "memory_GiB": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}"},
        "versions": versions(), "rates": rates, "workloads": rows,
    }
    os.makedirs(args.results_dir, exist_ok=True)
    dev = re.sub(r"[^a-z0-9]+", "-", props.name.lower()).strip("-")
    stem = os.path.join(args.results_dir, f"reconstruct-{dev}-{now.strftime('%Y-%m-%d')}")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=2)
    write_markdown(stem + ".md", res)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
