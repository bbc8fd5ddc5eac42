"""Every workload against every peer, in one process and one run; writes a table.

    python -m benchmarks.run [--device cpu|cuda] [--workload NAME[,NAME...]] [--repeats N]
                             [--quick | --max-matrices N] [--max-run-s S] [--peer SUBSTRING] [--out DIR]
    python -m benchmarks.run --list
    python -m benchmarks.run --merge A.json B.json [...]     # one table from several runs

Prints a Markdown table and writes benchmarks/results/<device>-<date>.{md,json,png}.
See benchmarks/README.md for how to read it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import harness, peers as peers_mod, report
from .workloads import WORKLOADS, Workload, get_workload, rotated_copy

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_MAX_RUN_S = {"cpu": 60.0, "cuda": 20.0}
# A skipped baseline's estimate is used for the speedup column (marked ≈) only when its probe ran
# this long; shorter probes extrapolate too far to be quoted.
MIN_PROBE_FOR_SPEEDUP_S = 1.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _flush_bytes(device: str) -> int:
    if device == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
        return max(256 << 20, 2 * l2)
    size = 0
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
        size = int(text.rstrip("KMGkmg")) * mult
    except (OSError, ValueError):
        pass
    return min(1 << 30, max(64 << 20, 2 * size))


def _row(workload: Workload, peer: peers_mod.Peer, status: str, **kw) -> Dict:
    row = dict(workload=workload.label, workload_name=workload.name, peer=peer.name, ours=peer.ours,
               status=status, note=peer.note)
    row.update(kw)
    return row


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_workload(wl: Workload, peer_list: List[peers_mod.Peer], args, flush: harness.CacheFlusher
                 ) -> (Dict, List[Dict]):
    device = args.device
    summary = wl.summary()
    summary["subsample"] = wl.is_subsample
    rows: List[Dict] = []
    log(f"== {wl.label}: {len(wl)} matrices, {wl.params / 1e6:.2f}M params, {wl.n_shapes} shapes")

    # 1. Which peers run: availability, then a time estimate from small probes.
    probe_cache: Dict = {}
    plan = []
    for peer in peer_list:
        if peer.skip:
            rows.append(_row(wl, peer, "skipped", reason=peer.skip))
            continue
        try:
            est = harness.estimate(peer.fn, wl, device, args.max_run_s, probe_cache)
        except Exception as e:  # noqa: BLE001 - a failing peer is a result, not a crash
            rows.append(_row(wl, peer, "error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            log(f"   {peer.name}: error in probe: {e}")
            _free(device)
            continue
        if args.estimate_only:
            rows.append(_row(wl, peer, "estimated", estimate_s=est.seconds, reason=est.describe()))
            log(f"   {peer.name}: {est.describe()}")
        elif est.seconds > args.max_run_s and not args.no_skip:
            rows.append(_row(wl, peer, "skipped", estimate_s=est.seconds, estimate_probe_s=est.probe_seconds,
                             reason=f"too slow here: {est.describe()} > --max-run-s {args.max_run_s:g}"))
            log(f"   {peer.name}: skipped, {est.describe()}")
        else:
            plan.append((peer, est))
    full_key = tuple(range(len(wl)))
    base = probe_cache.pop(full_key, None)  # small workloads: the probes made it already
    probe_cache.clear()
    if not plan:
        base = None
    _free(device)

    # 2. Inputs: rotated copies, memory permitting.
    if plan:
        nbytes = wl.nbytes()
        copies = max(1, min(args.copies, args.copy_bytes // max(1, nbytes)))
        need = (copies + 2) * nbytes
        avail = harness.memory_available(device)
        if need > 0.9 * avail:
            for peer, est in plan:
                rows.append(_row(wl, peer, "skipped", estimate_s=est.seconds,
                                 reason=f"needs ~{need / 2**30:.1f} GiB for inputs and outputs, "
                                        f"{avail / 2**30:.1f} GiB available; {est.describe()}"))
            plan = []
    if plan:
        log(f"   generating {copies} input cop{'y' if copies == 1 else 'ies'} ({nbytes / 2**20:.0f} MiB each)")
        if base is None:
            base = wl.materialize(device)
        inputs = [base] + [rotated_copy(*base, seed=k) for k in range(1, copies)]
        summary["copies"] = copies

        # 3. The float64 reference (on a subsample if it would be too slow or too big).
        ref_fn = lambda w, b: peers_mod.reference(w)  # noqa: E731
        ref_est = harness.estimate(ref_fn, wl, device, args.max_run_s, {full_key: base}, keep_output=True)
        subset = harness.accuracy_subset(wl, ref_est.seconds, args.max_run_s,
                                         int(0.25 * harness.memory_available(device)))
        summary["error_over"] = ("all" if len(subset) == len(wl) else f"{len(subset)}/{len(wl)} matrices")
        summary["reference_s"] = ref_est.seconds
        log(f"   float64 reference over {summary['error_over']} ({ref_est.describe()})")
        if ref_est.output is not None and len(subset) == len(wl):
            refs = ref_est.output
        else:
            refs = peers_mod.reference([base[0][i] for i in subset])
        ref_est.output = None
        _free(device)

        # 4. Time every planned peer.
        for peer, est in plan:
            time.sleep(args.settle_s)  # let the previous peer's BLAS threads stop spinning
            try:
                stats, first = harness.measure(peer.fn, inputs, args.repeats, device, flush)
                out_w, out_b = first
                bad = [i for i, (o, w) in enumerate(zip(out_w, base[0]))
                       if tuple(o.shape) != tuple(w.shape) or o.device != w.device]
                if bad:
                    raise RuntimeError(f"output {bad[0]} has shape {tuple(out_w[bad[0]].shape)} on "
                                       f"{out_w[bad[0]].device}, expected {tuple(base[0][bad[0]].shape)}")
                err = peers_mod.max_rel_err([out_w[i] for i in subset], refs)
                berr = peers_mod.max_bias_err(out_b, base[1])
                q1, q3 = stats.iqr
                rows.append(_row(wl, peer, "ok", median_ms=stats.median, min_ms=stats.min, max_ms=stats.max,
                                 q1_ms=q1, q3_ms=q3, times_ms=stats.times_ms, warmup_ms=stats.warmup_ms,
                                 estimate_s=est.seconds, max_rel_err=err, max_bias_rel_err=berr,
                                 out_dtype=str(out_w[0].dtype).replace("torch.", "")))
                log(f"   {peer.name}: median {stats.median:.1f} ms [{stats.min:.1f}, {stats.max:.1f}] "
                    f"err {err:.1e}")
                del first, out_w, out_b
            except Exception as e:  # noqa: BLE001
                rows.append(_row(wl, peer, "error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
                log(f"   {peer.name}: error: {e}")
            _free(device)
        del inputs, base, refs
        _free(device)

    # 5. Speedups against torch.linalg.svd per layer (its estimate when it was skipped).
    order = {p.name: i for i, p in enumerate(peer_list)}
    rows.sort(key=lambda r: order.get(r["peer"], 1 << 30))
    add_speedups(rows)
    return summary, rows


def add_speedups(rows: List[Dict]) -> None:
    by_wl: Dict[str, Dict] = {}
    for r in rows:
        if r["peer"] == peers_mod.BASELINE:
            by_wl[r["workload"]] = r
    for r in rows:
        b = by_wl.get(r["workload"])
        r["speedup"], r["speedup_estimated"] = None, False
        if r["status"] != "ok" or b is None:
            continue
        if b["status"] == "ok":
            r["speedup"] = b["median_ms"] / r["median_ms"]
        elif b.get("estimate_s") and b.get("estimate_probe_s", 0.0) >= MIN_PROBE_FOR_SPEEDUP_S:
            r["speedup"], r["speedup_estimated"] = b["estimate_s"] * 1e3 / r["median_ms"], True


def _split(values: Optional[List[str]]) -> List[str]:
    out: List[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--workload", action="append", metavar="NAME[,NAME]",
                   help=f"workloads (repeatable, comma-separated; default all): {', '.join(WORKLOADS)}")
    p.add_argument("--peer", action="append", metavar="SUBSTRING",
                   help="only peers whose name contains one of these (the baseline is always kept)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per peer after 1 warm-up (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="each workload's quick subsample (ddpm 24, stylegan2 16, sd15 8, llm 2, tiny 2000 matrices)")
    p.add_argument("--max-matrices", type=int, default=None,
                   help="at most N evenly spaced matrices per workload (labelled as a subsample)")
    p.add_argument("--max-run-s", type=float, default=None,
                   help="skip a peer whose estimated single call takes longer (default cpu 60, cuda 20)")
    p.add_argument("--no-skip", action="store_true", help="run peers whatever their estimate")
    p.add_argument("--estimate-only", action="store_true",
                   help="only estimate each peer's time per call from small probes (plans a full run)")
    p.add_argument("--copies", type=int, default=3, help="rotated input copies (default 3)")
    p.add_argument("--copy-bytes", type=int, default=1 << 30,
                   help="at most this many bytes of input copies (default 1 GiB); big workloads get fewer")
    p.add_argument("--settle-s", type=float, default=0.5,
                   help="pause before each peer's timed calls, so BLAS threads of the previous one go idle")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"output folder (default {RESULTS_DIR})")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--list", action="store_true", help="list workloads and peers, then exit")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="merge the results of several runs (same device) into one table")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.max_run_s is None:
        args.max_run_s = DEFAULT_MAX_RUN_S[args.device]
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def _stem(device: str, subsampled: bool) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    return f"{device}-{stamp}{'-subsample' if subsampled else ''}"


def merge(args) -> int:
    runs = [json.loads(Path(f).read_text()) for f in args.merge]
    devices = {r["environment"]["device_name"] for r in runs}
    if len(devices) > 1:
        log(f"warning: merging runs from different devices: {sorted(devices)}")
    env = dict(runs[0]["environment"])
    env["command"] = " ; ".join(r["environment"]["command"] for r in runs)
    env["merged_from"] = [str(f) for f in args.merge]
    workloads, rows = [], []
    for r in runs:
        workloads += r["workloads"]
        rows += r["results"]
    settings = dict(runs[0]["settings"])
    md = report.markdown(env, workloads, rows, settings)
    print(md)
    if not args.no_write:
        paths = report.write(args.out, _stem(env["device"], any(w["subsample"] for w in workloads)) + "-merged",
                             env, workloads, rows, settings)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        log("--device cuda: torch sees no CUDA device")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 peers really in float32

    names = _split(args.workload) or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        log(f"unknown workload(s) {unknown}; expected {', '.join(WORKLOADS)}")
        return 2
    peer_list = peers_mod.peers_for(args.device)
    wanted = _split(args.peer)
    if wanted:
        peer_list = [p for p in peer_list
                     if p.name == peers_mod.BASELINE or any(w.lower() in p.name.lower() for w in wanted)]

    if args.list:
        for n in names:
            s = get_workload(n).summary()
            print(f"{n:18s} {s['matrices']:7d} matrices {s['shapes']:5d} shapes {s['params'] / 1e6:9.2f}M params  "
                  f"largest {s['largest']:>11s}  quick {get_workload(n).quick}")
        for p in peer_list:
            print(f"peer: {p.name:40s} {'SKIP: ' + p.skip if p.skip else 'ok'}")
        return 0

    env = report.environment(args.device)
    flush_bytes = _flush_bytes(args.device)
    flush = harness.CacheFlusher(args.device, flush_bytes)
    settings = dict(repeats=args.repeats, warmup=1, copies=args.copies, copy_bytes=args.copy_bytes,
                    max_run_s=args.max_run_s, no_skip=args.no_skip, quick=args.quick,
                    max_matrices=args.max_matrices, settle_s=args.settle_s, flush_mib=flush_bytes >> 20, workloads=names,
                    peers=[p.name for p in peer_list], routes=dict(peers_mod.ROUTES))
    log(f"device {args.device}: {env['device_name']}; torch threads {env['torch_threads']}")
    workloads, rows = [], []
    for n in names:
        wl = get_workload(n)
        k = args.max_matrices if args.max_matrices is not None else (wl.quick if args.quick else None)
        wl = wl.subsample(k)
        summary, wl_rows = run_workload(wl, peer_list, args, flush)
        workloads.append(summary)
        rows.extend(wl_rows)

    md = report.markdown(env, workloads, rows, settings)
    print(md)
    if not args.no_write:
        paths = report.write(args.out, _stem(args.device, any(w["subsample"] for w in workloads)),
                             env, workloads, rows, settings)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
