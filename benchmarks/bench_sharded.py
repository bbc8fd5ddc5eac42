"""Peak memory and time of ``svs refine MODEL_DIR -o OUT_DIR`` on a generated sharded checkpoint,
with 1 and 2 processes (torchrun, gloo on the CPU).

    python -m benchmarks.bench_sharded --blocks 2                       # 8B-shaped blocks (llm-8b-p)
    python -m benchmarks.bench_sharded --blocks 300 --hidden 256 --intermediate 8192 --kv 256 \\
        --procs 1 --budget-mb 1024 --shard-mb 1000                        # a checkpoint 4x the budget

The checkpoint is Llama-shaped (names as ``transformers`` writes them, bfloat16, no biases): the
``llm-8b-p`` workload's blocks (q, o 3072x3072; k, v 1024x3072; gate, up 9216x3072; down
3072x9216), ``--blocks`` of them instead of 32, an embedding and head of ``--vocab`` rows (32000
instead of 128256, to save disk), in shards of ``--shard-mb``. Block weights are the identity plus
Gaussian noise (singular values within 1 +- 0.6, so the Gram route, as for pruned weights of
moderate condition number): the workloads' spectrum recipe costs seconds of QR per matrix, too
slow to generate gigabytes on 2 cores. Each process runs ``svs refine`` (the CLI, in process) and reports its own
peak RSS (``VmHWM``, which counts the pages of the memory-mapped shards it touched); the 2-process output must equal the 1-process output byte
for byte. Writes benchmarks/results/sharded-cpu-<UTC>.{md,json}.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from svs.testing import llama_state_dict, write_hf_dir

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def generate(root: Path, args: argparse.Namespace) -> Path:
    """The checkpoint (reused when ``root`` already holds one of this configuration)."""
    config = {k: getattr(args, k) for k in ("blocks", "hidden", "intermediate", "kv", "vocab", "shard_mb")}
    stamp = root.with_name(root.name + "-config.json")
    if stamp.exists() and json.loads(stamp.read_text()) == config:
        return root
    shutil.rmtree(root, ignore_errors=True)
    meta = llama_state_dict(args.blocks, args.hidden, args.intermediate, args.kv, args.vocab, bias=False, meta=True)
    gen = torch.Generator().manual_seed(0)

    def fill(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 1:
            return torch.ones(t.shape, dtype=t.dtype)
        w = torch.randn(t.shape, generator=gen) * (0.3 / t.shape[1] ** 0.5)
        if ".layers." in name:  # well conditioned (singular values within 1 +- 0.6): the Gram route
            w.diagonal().add_(1.0)
        return w.to(t.dtype)

    write_hf_dir(root, meta, max_shard_bytes=args.shard_mb << 20, fill=fill)
    stamp.write_text(json.dumps(config))
    return root


def memory_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, from /proc: unlike ``getrusage``, whose
    peak includes the parent's at fork, this is the process's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(src: Path, out: Path) -> None:
    """One process of a run: ``svs refine SRC -o OUT`` (under torchrun, one rank of it), then one
    JSON line with its peak RSS and time."""
    from svs.cli import main

    before = memory_mb("VmRSS")
    start = time.perf_counter()
    assert main(["refine", str(src), "-o", str(out), "--exclude", "embed|lm_head", "-q"]) == 0
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "peak_rss_mb": memory_mb("VmHWM"),
                      "rss_before_refine_mb": before, "seconds": time.perf_counter() - start}), flush=True)


def run(src: Path, out: Path, procs: int, threads: int) -> Dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    tail = ["-m", "benchmarks.bench_sharded", "--worker", str(src), str(out)]
    if procs == 1:
        cmd = [sys.executable] + tail
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
               "127.0.0.1", "--master-port", str(port)] + tail
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    return {"processes": procs, "threads_per_process": threads, "wall_s": wall, "ranks": ranks}


def digest(folder: Path) -> Dict[str, str]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        out[f.name] = h.hexdigest()
    return out


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--intermediate", type=int, default=9216)
    p.add_argument("--kv", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shard-mb", type=int, default=500)
    p.add_argument("--procs", default="1,2", help="process counts to run, e.g. 1,2")
    p.add_argument("--threads", type=int, default=0, help="threads per process (default: cores / processes)")
    p.add_argument("--budget-mb", type=float, help="the memory budget to check the peak RSS against")
    p.add_argument("--work", default="/tmp/svs-bench-sharded", help="where the checkpoint and outputs go")
    args = p.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker[0]), Path(args.worker[1]))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = generate(work / "model", args)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    shards = sorted(src.glob("*.safetensors"))
    print(f"checkpoint: {size / 2**30:.2f} GiB in {len(shards)} shards (largest {max(f.stat().st_size for f in shards) / 2**20:.0f} MiB), "
          f"generated or reused in {time.perf_counter() - t0:.0f} s", flush=True)
    runs, digests = [], {}
    for procs in [int(x) for x in args.procs.split(",")]:
        threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
        load = os.getloadavg()[0]
        r = run(src, work / f"out-{procs}", procs, threads)
        r["weights"] = json.loads((work / f"out-{procs}" / "svs_refine.json").read_text())["report"]["totals"]["weights"]
        r["load_before"] = load
        digests[procs] = digest(work / f"out-{procs}")
        runs.append(r)
        print(json.dumps(r), flush=True)
    identical = len(set(json.dumps(d) for d in digests.values())) == 1
    write_results(args, size, len(shards), max(f.stat().st_size for f in shards), runs, identical)


def write_results(args, size: int, n_shards: int, largest: int, runs: List[Dict], identical: bool) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    head = {
        "command": "python -m benchmarks.bench_sharded " + " ".join(sys.argv[1:]),
        "date": now.isoformat(timespec="seconds"), "machine": f"{cpu}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB", "torch": torch.__version__,
        "commit": commit, "checkpoint_gib": size / 2**30, "shards": n_shards, "largest_shard_mib": largest / 2**20,
        "config": {k: getattr(args, k) for k in ("blocks", "hidden", "intermediate", "kv", "vocab", "shard_mb")},
        "budget_mb": args.budget_mb, "outputs_identical": identical,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"sharded-cpu-{now:%Y-%m-%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps({**head, "runs": runs}, indent=1))
    lines = [f"# svs refine on a sharded checkpoint, {head['date']}", "",
             f"- command: `{head['command']}`", f"- machine: {head['machine']}; torch {head['torch']}; commit {commit}",
             f"- checkpoint: {size / 2**30:.2f} GiB bfloat16 in {n_shards} shards (largest {largest / 2**20:.0f} MiB); "
             f"config {head['config']}",
             f"- outputs of all runs byte-identical: {identical}"]
    if args.budget_mb:
        peak = max(r["peak_rss_mb"] for run in runs for r in run["ranks"])
        lines.append(f"- budget {args.budget_mb:.0f} MB: peak RSS {peak:.0f} MB, checkpoint {size / 2**20 / args.budget_mb:.1f}x the budget: "
                     + ("within" if peak <= args.budget_mb else "OVER"))
    lines += ["", "| processes | threads each | wall s | rank | refine s | peak RSS MB | RSS before refine MB | weights | load avg before |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for r in run["ranks"]:
            lines.append(f"| {run['processes']} | {run['threads_per_process']} | {run['wall_s']:.1f} | {r['rank']} | {r['seconds']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['rss_before_refine_mb']:.0f} | {run['weights']} | {run['load_before']:.2f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
