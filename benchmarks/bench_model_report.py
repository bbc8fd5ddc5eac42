"""What the whole-model call costs over the bare operator: svs.refine_state_dict with its default
report, without a report, the bare operator svs.refine on the same tensors, and the authors' numpy
loop, on the benchmark workloads' real shapes (float32, generated spectra; workloads.py).

    python -m benchmarks.bench_model_report [--workload ddpm-cifar10-p50,stylegan2-base] [--repeats 5]

The peers run interleaved (one round = each peer once, in a shuffled order, seed 0, with a pause
of 0.3 s before each call so that no library's idle threads still spin from the previous peer),
after one warm-up round; the table gives the median over the rounds and the ratio to the bare
operator of the same round. Writes benchmarks/results/model-report-<device>-<UTC>.{md,json}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import svs

from . import peers
from .workloads import WORKLOADS

RESULTS = Path(__file__).resolve().parent / "results"


def state_dict_of(name: str, device: str) -> Dict[str, torch.Tensor]:
    """The workload as a state dict: '<module>.weight' and, where the layer has one, '<module>.bias'."""
    w = WORKLOADS[name]()
    weights, biases = w.materialize(device)
    named: Dict[str, torch.Tensor] = {}
    for pname, t, b in zip(w.names, weights, biases):
        named[pname] = t
        if b is not None:
            named[pname.rsplit(".", 1)[0] + ".bias"] = b
    return named


def preset_of(name: str) -> str:
    return "ddpm" if name.startswith("ddpm") else "stylegan2" if name.startswith("stylegan2") else "generic"


def peers_of(named: Dict[str, torch.Tensor], preset: str) -> Dict[str, Callable[[], object]]:
    weights = [n for n in named if not n.endswith(".bias")]
    w = [named[n] for n in weights]
    b = [named.get(n.rsplit(".", 1)[0] + ".bias") for n in weights]
    return {
        "svs.refine (bare operator)": lambda: svs.refine(w, b),
        "refine_state_dict, default report": lambda: svs.refine_state_dict(named, preset=preset),
        "refine_state_dict, stats=False": lambda: svs.refine_state_dict(named, preset=preset, stats=False),
        "authors numpy loop": lambda: peers.authors_numpy_loop(w, b),
    }


def run(workload: str, device: str, repeats: int) -> Dict:
    named = state_dict_of(workload, device)
    fns = peers_of(named, preset_of(workload))
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    ratios: Dict[str, List[float]] = {n: [] for n in names}
    shuffle = random.Random(0).shuffle
    for r in range(repeats + 1):  # round 0 is the warm-up
        order = list(names)
        shuffle(order)
        this: Dict[str, float] = {}
        for n in order:
            time.sleep(0.3)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fns[n]()
            if device == "cuda":
                torch.cuda.synchronize()
            this[n] = (time.perf_counter() - t0) * 1e3
        if r == 0:
            continue
        for n in names:
            times[n].append(this[n])
            ratios[n].append(this[n] / this[names[0]])
    return {
        "workload": workload, "preset": preset_of(workload), "matrices": sum(not n.endswith(".bias") for n in named),
        "rows": [{"peer": n, "median_ms": statistics.median(times[n]), "min_ms": min(times[n]),
                  "max_ms": max(times[n]), "ratio_to_operator": statistics.median(ratios[n])} for n in names],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="ddpm-cifar10-p50,stylegan2-base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
    meta = {
        "date_utc": stamp, "device": args.device, "torch": torch.__version__, "svs": svs.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python -m benchmarks.bench_model_report " + " ".join(argv or []),
    }
    results = [run(w, args.device, args.repeats) for w in args.workload.split(",")]
    lines = [f"# refine_state_dict vs the bare operator ({args.device}, {stamp} UTC)", "",
             f"torch {meta['torch']}, svs {meta['svs']}, {meta['machine']}; median of {args.repeats} "
             "interleaved rounds after one warm-up; ratio: to the bare operator in the same round (median).", ""]
    for res in results:
        lines += [f"## {res['workload']} ({res['matrices']} matrices, preset {res['preset']})", "",
                  "| peer | median ms | range ms | x operator |", "|---|---|---|---|"]
        lines += [f"| {r['peer']} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | "
                  f"{r['ratio_to_operator']:.2f} |" for r in res["rows"]]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"model-report-{args.device}-{stamp}"
    base.with_suffix(".md").write_text(text)
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
