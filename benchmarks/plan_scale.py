"""What refining a width-pruned 70B transformer costs on N GPUs: the cost model, the split the
code would make, and the inputs still to be measured on a GPU.

    python -m benchmarks.plan_scale --gpus 8 [--cpu-seconds-per-unit X] [--gpu-seconds-per-unit Y]

Cost model (the benchmarks' time estimates, ``Workload.costs``; ``svs.planner.matrix_cost``):
a weight flattened to m x n costs ``u = m*n*min(m, n) + OVERHEAD`` units (``svs.planner.OVERHEAD``), and a device refines
``1 / c`` units per second. The matrices are split into the refine calls ``svs.planner.plan``
makes and assigned by ``svs.planner.assign`` (largest first onto the least-loaded rank), so
the refine time on N ranks is ``c * max_rank(sum of its units)``, plus reading and writing the
checkpoint once (``2 * bytes / disk bandwidth``, shared by the ranks). Writes
benchmarks/results/plan-<model>-<N>gpu.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from svs.options import RefineOptions
from svs.planner import OVERHEAD, assign, plan
from svs.testing import llama_state_dict

RESULTS = Path(__file__).resolve().parent / "results"

# Llama 3 70B (hidden 8192, intermediate 28672, 8 KV heads of 128, 80 layers, vocab 128256), width-pruned
# with the llm-8b-p workload's keep ratios (hidden 3072/4096, intermediate 9216/14336, KV kept).
MODELS: Dict[str, Dict[str, int]] = {
    "70b-p": dict(layers=80, hidden=6144, intermediate=18432, kv=1024, vocab=128256),
    "8b-p": dict(layers=32, hidden=3072, intermediate=9216, kv=1024, vocab=128256),
}
# Units per second measured here: benchmarks/results/cpu-2026-11-23-091121.json, svs.refine auto on
# llm-8b-p, probe of its cheapest matrix (1024x3072: 0.284 s for 1024*3072*1024 + OVERHEAD units), 2 cores.
CPU_SECONDS_PER_UNIT = 0.2838 / (1024 * 3072 * 1024 + OVERHEAD)
FP64_PEAK = {"H100 SXM": 67e12, "H200": 67e12}  # FP64 tensor-core flop/s (NVIDIA data sheets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="70b-p", choices=sorted(MODELS))
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--cpu-seconds-per-unit", type=float, default=CPU_SECONDS_PER_UNIT)
    p.add_argument("--gpu-seconds-per-unit", type=float,
                   help="c measured on the GPU: seconds of `python -m benchmarks.run --device cuda --workload "
                        "llm-8b-p` (svs.refine auto) divided by that workload's units (printed below)")
    p.add_argument("--disk-gb-per-s", type=float, default=2.0, help="read+write bandwidth of the checkpoint's disk")
    args = p.parse_args()
    cfg = MODELS[args.model]
    meta = model_meta(args.model)
    jobs, costs = jobs_and_costs(meta)
    owner = assign(costs, args.gpus)
    loads = [sum(c for c, o in zip(costs, owner) if o == r) for r in range(args.gpus)]
    nbytes = sum(t.numel() * t.element_size() for t in meta.values())
    units_8b = sum(jobs_and_costs(model_meta("8b-p"))[1])
    io_s = 2 * nbytes / (args.disk_gb_per_s * 1e9)
    largest = max((meta[n] for job in jobs for n in job), key=lambda t: t.numel())
    rows = [
        ("checkpoint", f"{nbytes / 1e9:.1f} GB bfloat16, {sum(t.numel() for t in meta.values()) / 1e9:.1f}G parameters"),
        ("refine calls (jobs)", f"{len(jobs)}; largest matrix {tuple(largest.shape)}"),
        ("units, total", f"{sum(costs):.3e}"),
        (f"units per rank, LPT over {args.gpus}", f"max {max(loads):.3e}, min {min(loads):.3e} (imbalance {max(loads) / (sum(loads) / len(loads)):.3f}x)"),
        ("units of llm-8b-p (to calibrate c on a GPU)", f"{units_8b:.3e}"),
        ("c on this CPU (2 cores)", f"{args.cpu_seconds_per_unit:.3e} s/unit"),
        ("refine time, 1 CPU process (2 cores)", f"{sum(costs) * args.cpu_seconds_per_unit / 3600:.1f} h"),
        (f"refine time, {args.gpus} GPUs", f"{max(loads) * args.gpu_seconds_per_unit:.0f} s" if args.gpu_seconds_per_unit
         else f"c_gpu x {max(loads):.3e} s: c_gpu to be measured (see --gpu-seconds-per-unit)"),
        ("lower bound per GPU at FP64 peak", f"{4 * max(loads) / FP64_PEAK['H100 SXM']:.1f} s (Gram route >= 4 m n min(m,n) flops; H100 67 TFLOP/s)"),
        (f"read + write at {args.disk_gb_per_s} GB/s", f"{io_s:.0f} s"),
    ]
    text = "\n".join([f"# Plan: svs refine of a {args.model} model on {args.gpus} GPUs", "",
                      f"- command: `python -m benchmarks.plan_scale --model {args.model} --gpus {args.gpus}`",
                      f"- shapes: {cfg}; q, k, v, o, gate, up, down per block; embeddings and head not refined",
                      "- time = c x max over ranks of the units assigned to the rank + 2 x bytes / disk bandwidth",
                      "", "| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"plan-{args.model}-{args.gpus}gpu.md"
    out.write_text(text + "\n")
    print(text)
    print(f"wrote {out}")


def model_meta(name: str) -> Dict[str, torch.Tensor]:
    """The model's state dict as meta tensors (names as transformers writes them)."""
    cfg = MODELS[name]
    return llama_state_dict(cfg["layers"], cfg["hidden"], cfg["intermediate"], cfg["kv"], cfg["vocab"], bias=False, meta=True)


def jobs_and_costs(meta: Dict[str, torch.Tensor]) -> Tuple[List[List[str]], List[float]]:
    """The refine calls ``svs refine`` makes for the model (its 2-D block weights), and their units."""
    batches = plan(meta, RefineOptions(preset="generic", exclude="embed|lm_head"))
    return [b.names() for b in batches.batches], batches.costs


if __name__ == "__main__":
    main()
