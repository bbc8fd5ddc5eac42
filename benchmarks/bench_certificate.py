#!/usr/bin/env python
"""Cost of the certificate (csrc/certificate.cpp): torch.ops.svs.refine with certify=True vs
certify=False on CPU workloads (benchmarks/workloads.py), in one run.

Per workload: one warm-up call of each, then `--repeats` pairs with the order alternating
(on/off, off/on, ...) so that drift of a shared machine falls on both alike. Reported per mode:
median, min, max of the wall times; the overhead as median(on) / median(off) - 1 and as the median
of the per-pair ratios (on_r / off_r - 1, less sensitive to slow drift); and the certificate
alone, timed as svs::_certify on the call's own results (the same computation, without the
decomposition), median of the same number of repeats, as a fraction of median(off). The
end-to-end difference is at the mercy of the machine's noise (the spread columns say how much);
the standalone time is the cleaner number.

  python -m benchmarks.bench_certificate --workloads ddpm-cifar10-p50,stylegan2-base --repeats 7

Results: benchmarks/results/certificate-<device>-<date>.{json,md}, with machine, command, date.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import svs_kernels  # noqa: E402,F401  (registers torch.ops.svs.*)
from benchmarks.report import environment  # noqa: E402
from benchmarks.workloads import get_workload  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(name: str, repeats: int, method: str, map: str) -> dict:
    weights, biases = get_workload(name).materialize("cpu")
    refine = lambda certify: torch.ops.svs.refine_with_spectra(weights, biases, map, 1e-8, method, certify)  # noqa: E731
    refine(True)  # warm-up (allocator, BLAS threads)
    _, (out, _, spectra, routes) = timed(lambda: refine(False))
    routes = routes.tolist()
    times = {"on": [], "off": []}
    for r in range(repeats):
        for certify in ((True, False) if r % 2 == 0 else (False, True)):
            times["on" if certify else "off"].append(timed(lambda: refine(certify))[0])
    alone = [timed(lambda: torch.ops.svs._certify(weights, out, spectra, routes, map, 0.0))[0] for _ in range(repeats)]
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "workload": name, "matrices": len(weights), "params": sum(w.numel() for w in weights),
        "method": method, "map": map, "repeats": repeats, "times_s": times, "certificate_alone_s": alone,
        "median_s": median, "min_s": {k: min(v) for k, v in times.items()}, "max_s": {k: max(v) for k, v in times.items()},
        "overhead_of_medians": median["on"] / median["off"] - 1,
        "overhead_paired_median": statistics.median(a / b - 1 for a, b in zip(times["on"], times["off"])),
        "certificate_alone_median_s": statistics.median(alone),
        "certificate_alone_fraction": statistics.median(alone) / median["off"],
    }


def markdown(env: dict, rows: list) -> str:
    lines = [
        f"# Cost of the certificate of svs.refine, {env['date']}", "",
        f"- command: `{env['command']}`",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores, torch threads {env['torch_threads']}; "
        f"torch {env['torch']}; commit {env['git_commit'][:7] if env['git_commit'] else '?'}"
        f"{' (dirty)' if env['git_dirty'] else ''}; load average before: {env['load_before']}",
        "- times: wall seconds of torch.ops.svs.refine_with_spectra on the CPU, certify on/off in "
        "alternating order; 'alone': svs::_certify on the same results", "",
        "| workload | matrices | off median (min-max) s | on median (min-max) s | overhead of medians | "
        "paired median overhead | certificate alone s | alone / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['matrices']} | {r['median_s']['off']:.3f} ({r['min_s']['off']:.3f}-{r['max_s']['off']:.3f}) "
            f"| {r['median_s']['on']:.3f} ({r['min_s']['on']:.3f}-{r['max_s']['on']:.3f}) | {100 * r['overhead_of_medians']:+.1f} % "
            f"| {100 * r['overhead_paired_median']:+.1f} % | {r['certificate_alone_median_s']:.4f} "
            f"| {100 * r['certificate_alone_fraction']:.2f} % |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="ddpm-cifar10-p50,stylegan2-base")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--method", default="auto")
    p.add_argument("--map", default="sqrt")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    env = environment("cpu")
    env["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for name in args.workloads.split(","):
        rows.append(bench(name, args.repeats, args.method, args.map))
        print(markdown(env, rows[-1:]).splitlines()[-1], flush=True)
    env["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    stem = f"certificate-cpu-{env['date'][:10]}"
    out = Path(args.out)
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(markdown(env, rows) + f"\nLoad average after: {env['load_after']}.\n")
    print(f"wrote {out / stem}.{{json,md}}")


if __name__ == "__main__":
    main()
