#!/usr/bin/env python
"""Tuning data for the GEMM shape rule of the Triton reconstruction (GPU only).

For each shape set (the benchmark workloads and a few uniform ones) and each launch kind (float32
output: 3xTF32; bfloat16 output: TF32; float64 factors), it times the whole reconstruction with
every candidate config of svs_kernels/triton_ops/gemm.py CONFIGS forced (what triton.autotune does,
over the same candidates), and records the best config, every time, and what the shape rule
gemm.choose_config picks with its time relative to the best. The rule is meant to be adjusted
from this data (commit both):
  python benchmarks/tune_reconstruct.py            # writes benchmarks/results/reconstruct-tuning-<device>-<date>.{json,md}
"""
import argparse
import datetime
import json
import math
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KINDS = {"fp32-out-3xtf32": (torch.float32, torch.float32), "bf16-out-tf32": (torch.float32, torch.bfloat16),
         "fp64": (torch.float64, torch.float64)}


def shape_sets(args):
    from benchmarks.bench_reconstruct import workload_shapes

    sets = {}
    for name in ("ddpm-cifar10-p50", "sd15-unet", "llm-8b-p"):
        sets[name] = workload_shapes(name, args)[0]
    sets.update({"64x(128x1152)": [(128, 1152)] * 64, "8x(4096x4096)": [(4096, 4096)] * 8,
                 "1x(1280x23040)": [(1280, 23040)], "113x(64x576)": [(64, 576)] * 113})
    return sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llm-blocks", type=int, default=2, help="blocks of llm-8b-p (2: about 1.4 TFLOP per call)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--results-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args()
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("tune_reconstruct.py: needs a CUDA GPU and compiled Triton (TRITON_INTERPRET unset)")
    import triton.testing

    import svs_kernels  # noqa: F401
    from svs_kernels.triton_ops import gemm
    from svs_kernels.triton_ops import reconstruct as R

    props = torch.cuda.get_device_properties(0)
    rule, real_candidates = gemm.choose_config, gemm.candidates
    rows = []
    for set_name, shapes in shape_sets(args).items():
        m = torch.tensor([a for a, _ in shapes]).numpy()
        n = torch.tensor([b for _, b in shapes]).numpy()
        for kind in args.kinds.split(","):
            op_dt, out_dt = KINDS[kind]
            if op_dt == torch.float64 and sum(a * b * min(a, b) for a, b in shapes) > 2e12:
                continue  # float64 on the largest sets: minutes per config
            gen = torch.Generator(device="cuda").manual_seed(0)
            u = [torch.randn(a, min(a, b), device="cuda", generator=gen, dtype=op_dt) / math.sqrt(a) for a, b in shapes]
            s = [torch.rand(min(a, b), device="cuda", generator=gen, dtype=op_dt) for a, b in shapes]
            vh = [torch.randn(min(a, b), b, device="cuda", generator=gen, dtype=op_dt) / math.sqrt(b) for a, b in shapes]
            out = [torch.empty(a, b, device="cuda", dtype=out_dt) for a, b in shapes]
            op_name = str(op_dt).split(".")[1]
            times = {}
            for c in gemm.CONFIGS[op_name]:
                gemm.candidates = lambda op, c=c: (c,)  # the plan (C++) then has only c to pick
                try:
                    R.reconstruct(u, s, vh, out, "sqrt")  # compile
                    times[str(tuple(c))] = triton.testing.do_bench(lambda: R.reconstruct(u, s, vh, out, "sqrt"),
                                                                   return_mode="median")
                finally:
                    gemm.candidates = real_candidates
            picked = str(tuple(rule(op_name, m, n, props.multi_processor_count)))
            best = min(times, key=times.get)
            row = {"set": set_name, "kind": kind, "matrices": len(shapes), "ms": times, "best": best,
                   "rule": picked, "rule_over_best": times[picked] / times[best]}
            rows.append(row)
            print(f"{set_name:18s} {kind:16s} best {best} {times[best]:.3f} ms; rule {picked} "
                  f"x{row['rule_over_best']:.2f}", flush=True)
            del u, s, vh, out
            torch.cuda.empty_cache()
    now = datetime.datetime.now(datetime.timezone.utc)
    res = {"benchmark": "reconstruct-tuning", "date": now.isoformat(timespec="seconds"), "device": props.name,
           "sm_count": props.multi_processor_count, "torch": torch.__version__,
           "triton": __import__("triton").__version__, "config_fields": list(gemm.Config._fields), "rows": rows}
    os.makedirs(args.results_dir, exist_ok=True)
    dev = re.sub(r"[^a-z0-9]+", "-", props.name.lower()).strip("-")
    stem = os.path.join(args.results_dir, f"reconstruct-tuning-{dev}-{now.strftime('%Y-%m-%d')}")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(f"# GEMM configs of the Triton reconstruction: {props.name}, triton {res['triton']}\n\n"
                "| shape set | kind | best config | best ms | rule's config | rule / best |\n|---|---|---|---:|---|---:|\n")
        for r in rows:
            f.write(f"| {r['set']} | {r['kind']} | {r['best']} | {r['ms'][r['best']]:.3f} | {r['rule']} | "
                    f"{r['rule_over_best']:.2f} |\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
