#!/usr/bin/env python
"""One switch of torch.ops.svs.refine on the CPU, on vs off, on CPU workloads
(benchmarks/workloads.py), in one run. `--switch`:
  certify  the certificate (csrc/certificate.cpp): certify=True vs certify=False;
  spread   small matrices one per thread (csrc/refine_aten.cpp, the default limit of
           svs::_cpu_spread_max_side) vs every chunk with LAPACK's own threads (limit 0).

Per workload: one warm-up call of each, then `--repeats` pairs with the order alternating
(on/off, off/on, ...) so that drift of a shared machine falls on both alike. Three measures:
  wall      median (min-max) of the wall times per mode, the overhead of the medians and the
            median of the per-pair ratios (on_r / off_r - 1, less sensitive to slow drift);
  cpu       the same with the process's CPU time (both threads), less sensitive to other
            processes taking the cores;
  profiler  (certify only) the share of the certificate in `--profiled` calls with certify=True, from
            torch.profiler: the CPU time of its "svs::certify" ranges (RECORD_FUNCTION in
            certify()) over that of the whole "svs::refine_with_spectra" call; median of the calls.
On a machine shared with other jobs the wall and cpu differences are at the mercy of the noise
(the min-max columns say how much); the profiler share is attributed within each call.

  python -m benchmarks.bench_switch --switch certify --workloads ddpm-cifar10-p50,stylegan2-base --repeats 11
  python -m benchmarks.bench_switch --switch spread --workloads ddpm-cifar10-p50,stylegan2-base,tiny-batch

Results: benchmarks/results/<switch>-cpu-<date>.{json,md}, with machine, command, date.
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
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def certificate_share(refine) -> float:
    """CPU time of the svs::certify ranges / CPU time of the whole call, in one profiled call."""
    from torch.profiler import profile

    with profile() as prof:
        refine(True)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    return totals["svs::certify"] / totals["svs::refine_with_spectra"]


def calls(switch: str, weights, biases, method: str, map: str):
    """refine(on) for the switch: True is the default (certificate, spreading), False the other."""
    spread = torch.ops.svs._cpu_spread_max_side()

    def refine(on: bool):
        if switch == "certify":
            return torch.ops.svs.refine_with_spectra(weights, biases, map, 1e-8, method, on)
        previous = torch.ops.svs._cpu_spread_max_side(spread if on else 0)
        try:
            return torch.ops.svs.refine_with_spectra(weights, biases, map, 1e-8, method)
        finally:
            torch.ops.svs._cpu_spread_max_side(previous)

    return refine


def bench(name: str, switch: str, repeats: int, profiled: int, method: str, map: str) -> dict:
    weights, biases = get_workload(name).materialize("cpu")
    refine = calls(switch, weights, biases, method, map)
    refine(True)  # warm-up (allocator, BLAS threads)
    refine(False)
    times = {"on": [], "off": []}
    for r in range(repeats):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            times["on" if on else "off"].append(timed(lambda: refine(on))[0])
    shares = [certificate_share(refine) for _ in range(profiled)] if switch == "certify" else []
    row = {"workload": name, "matrices": len(weights), "params": sum(w.numel() for w in weights),
           "switch": switch, "method": method, "map": map, "repeats": repeats, "times_wall_cpu_s": times,
           "profiled_shares": shares, "profiled_share_median": statistics.median(shares) if shares else None}
    for i, clock in enumerate(("wall", "cpu")):
        on, off = ([t[i] for t in times[k]] for k in ("on", "off"))
        row[clock] = {"median_on": statistics.median(on), "median_off": statistics.median(off),
                      "min_on": min(on), "max_on": max(on), "min_off": min(off), "max_off": max(off),
                      "overhead_of_medians": statistics.median(on) / statistics.median(off) - 1,
                      "overhead_paired_median": statistics.median(a / b - 1 for a, b in zip(on, off))}
    return row


TITLES = {"certify": "Cost of the certificate of svs.refine",
          "spread": "svs.refine on the CPU: small matrices one per thread (on) vs LAPACK's threads (off)"}


def markdown(env: dict, rows: list, switch: str) -> str:
    lines = [
        f"# {TITLES[switch]}, {env['date']}", "",
        f"- command: `{env['command']}`",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores, torch threads {env['torch_threads']}; "
        f"torch {env['torch']}; commit {env['git_commit'][:7] if env['git_commit'] else '?'}"
        f"{' (dirty)' if env['git_dirty'] else ''}; load average before: {env['load_before']}",
        f"- torch.ops.svs.refine_with_spectra on the CPU (method auto, map sqrt), {switch} on/off in "
        "alternating order; times in seconds, median (min-max); 'overhead': on / off - 1 (negative: on "
        "is faster); 'profiler share' (certify): svs::certify's CPU time within the call", "",
        "| workload | matrices | clock | off | on | overhead of medians | paired median overhead |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for clock in ("wall", "cpu"):
            c = r[clock]
            lines.append(
                f"| {r['workload']} | {r['matrices']} | {clock} | {c['median_off']:.3f} ({c['min_off']:.3f}-{c['max_off']:.3f}) "
                f"| {c['median_on']:.3f} ({c['min_on']:.3f}-{c['max_on']:.3f}) | {100 * c['overhead_of_medians']:+.1f} % "
                f"| {100 * c['overhead_paired_median']:+.1f} % |")
        if not r["profiled_shares"]:
            continue
        shares = ", ".join(f"{100 * s:.1f}" for s in r["profiled_shares"])
        lines.append(f"| {r['workload']} | {r['matrices']} | profiler share | | | "
                     f"{100 * r['profiled_share_median']:.1f} % (calls: {shares} %) | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", choices=sorted(TITLES), default="certify")
    p.add_argument("--workloads", default="ddpm-cifar10-p50,stylegan2-base")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--profiled", type=int, default=3)
    p.add_argument("--method", default="auto")
    p.add_argument("--map", default="sqrt")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    env = environment("cpu")
    env["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for name in args.workloads.split(","):
        rows.append(bench(name, args.switch, args.repeats, args.profiled, args.method, args.map))
        print("\n".join(markdown(env, rows[-1:], args.switch).splitlines()[-3:]), flush=True)
    env["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    stem = f"{'certificate' if args.switch == 'certify' else args.switch}-cpu-{env['date'][:10]}"
    out = Path(args.out)
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(markdown(env, rows, args.switch) + f"\nLoad average after: {env['load_after']}.\n")
    print(f"wrote {out / stem}.{{json,md}}")


if __name__ == "__main__":
    main()
