"""Every workload against every peer, in one process and one run; writes a table.

    python -m benchmarks.run [--device cpu|cuda] [--workload NAME[,NAME...] | --with NAME[,NAME...]]
                             [--repeats N] [--quick | --max-matrices N] [--max-run-s S] [--peer SUBSTRING]
                             [--out DIR]
    python -m benchmarks.run --list
    python -m benchmarks.run --merge A.json B.json [...]     # one table from several runs

Prints a Markdown table and writes <device>-<date>.{md,json,png} to --out (default
benchmarks/.cache/results, untracked; pass --out benchmarks/results for results to commit). The md
and json are rewritten after every measured peer, so a run cut off by a time limit keeps its rows.
See benchmarks/README.md for how to read it.

bfloat16 / float16 workloads (`Workload.low_precision`, e.g. llm-8b-p-block-bf16) are run in full
whatever --max-run-s and --quick say: every available peer is timed and the error is computed over
every matrix (memory permitting), because their error column is the point.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import harness, peers as peers_mod, report
from .workloads import WORKLOADS, Workload, get_workload, rotated_copy

ADHOC_DIR = Path(__file__).resolve().parent / ".cache" / "results"  # untracked: ad-hoc runs
DEFAULT_MAX_RUN_S = {"cpu": 60.0, "cuda": 20.0}
# No speedup is quoted against a baseline that was only estimated, nor from timings whose max is
# over STALL_SPREAD x their min: such a spread means the machine stalled (another process, a
# throttled CPU quota), and the median of a few calls can land on either side of it.
STALL_SPREAD = 2.0
# Left out of --quick unless named: even one of their matrices takes tens of seconds per peer and
# for the float64 reference on a CPU (an 8B model's 9216x3072; SD 1.5's 1280x23040).
NOT_QUICK = ("sd15-unet", "llm-8b-p")
# Run only when named (--workload or --with): minutes to an hour per peer on a 2-core CPU, every
# peer timed (the bf16 variants) or one matrix's worth of a full workload already in the default set.
NAMED_ONLY = ("llm-8b-p-block", "llm-8b-p-block-bf16", "sd15-unet-bf16")


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


class Results:
    """The run's workloads and rows, written (md, json) again after every row, so a run cut off by a
    time limit keeps everything it measured (the JSON says "complete": false until the end); the
    plot is drawn once, at the end."""

    def __init__(self, args, env: Dict, settings: Dict, stem: str):
        self.args, self.env, self.settings, self.stem = args, env, settings, stem
        self.workloads: List[Dict] = []
        self.rows: List[Dict] = []
        self.order = {p: i for i, p in enumerate(settings["peers"])}

    def add(self, row: Dict) -> None:
        self.rows.append(row)
        self.save(complete=False)

    def save(self, complete: bool) -> Dict[str, Path]:
        wl_order = {w["label"]: i for i, w in enumerate(self.workloads)}
        self.rows.sort(key=lambda r: (wl_order.get(r["workload"], 1 << 30), self.order.get(r["peer"], 1 << 30)))
        add_speedups(self.rows)
        if self.args.no_write:
            return {}
        return report.write(self.args.out, self.stem, self.env, self.workloads, self.rows, self.settings,
                            complete=complete)


def dry_run_workload(wl: Workload, peer_list: List[peers_mod.Peer], args, results: Results) -> None:
    """What a run does without timing: the workload (its shapes, and its first matrix drawn on the
    CPU) and one row per peer, so the files and the table of a run can be rehearsed anywhere."""
    results.workloads.append(dict(wl.summary(), subsample=wl.is_subsample))
    wl.subsample(1).materialize("cpu")
    for peer in peer_list:
        results.add(_row(wl, peer, "dry-run", reason="not timed (--dry-run)" + (f"; {peer.skip}" if peer.skip else "")))


def run_workload(wl: Workload, peer_list: List[peers_mod.Peer], args, flush: harness.CacheFlusher,
                 results: Results) -> None:
    device = args.device
    summary = dict(wl.summary(), subsample=wl.is_subsample)
    results.workloads.append(summary)
    rows = results  # every row goes to the results at once (and to disk)
    log(f"== {wl.label}: {len(wl)} matrices, {wl.params / 1e6:.2f}M params, {wl.n_shapes} shapes")

    # 1. Which peers run: availability, then a time estimate from small probes.
    probe_cache: Dict = {}
    plan = []
    for peer in peer_list:
        if peer.skip:
            rows.add(_row(wl, peer, "skipped", reason=peer.skip))
            continue
        if wl.low_precision and not args.estimate_only:
            plan.append((peer, None))  # timed whatever it costs (module docstring)
            continue
        try:
            est = harness.estimate(peer.fn, wl, device, args.max_run_s, probe_cache)
        except Exception as e:  # noqa: BLE001 - a failing peer is a result, not a crash
            rows.add(_row(wl, peer, "error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            log(f"   {peer.name}: error in probe: {e}")
            _free(device)
            continue
        if args.estimate_only:
            rows.add(_row(wl, peer, "estimated", estimate_s=est.seconds, reason=est.describe()))
            log(f"   {peer.name}: {est.describe()}")
        elif est.seconds > args.max_run_s and not args.no_skip:
            rows.add(_row(wl, peer, "skipped", estimate_s=est.seconds, estimate_probe_s=est.probe_seconds,
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
                rows.add(_row(wl, peer, "skipped", estimate_s=est and est.seconds,
                                 reason=f"needs ~{need / 2**30:.1f} GiB for inputs and outputs, "
                                        f"{avail / 2**30:.1f} GiB available"
                                        + (f"; {est.describe()}" if est else "")))
            plan = []
    if plan:
        log(f"   generating {copies} input cop{'y' if copies == 1 else 'ies'} ({nbytes / 2**20:.0f} MiB each)")
        if base is None:
            base = wl.materialize(device)
        inputs = [base] + [rotated_copy(*base, seed=k) for k in range(1, copies)]
        summary["copies"] = copies

        # 3. The float64 reference (on a subsample if it would be too slow or too big; low-precision
        #    workloads: every matrix that fits, computed once, not estimated).
        mem = int(0.25 * harness.memory_available(device))
        if wl.low_precision:
            subset = harness.accuracy_subset(wl, 0.0, math.inf, mem)
            ms, refs = harness.timed_call(peers_mod.reference, ([base[0][i] for i in subset],), device)
            summary["reference_s"], how = ms / 1e3, f"{harness.fmt_seconds(ms / 1e3)}, measured"
        else:
            ref_fn = lambda w, b: peers_mod.reference(w)  # noqa: E731
            ref_est = harness.estimate(ref_fn, wl, device, args.max_run_s, {full_key: base}, keep_output=True)
            subset = harness.accuracy_subset(wl, ref_est.seconds, args.max_run_s, mem)
            summary["reference_s"], how = ref_est.seconds, ref_est.describe()
            if ref_est.output is not None and len(subset) == len(wl):
                refs = ref_est.output
            else:
                refs = peers_mod.reference([base[0][i] for i in subset])
            ref_est.output = None
        summary["error_over"] = ("all" if len(subset) == len(wl) else f"{len(subset)}/{len(wl)} matrices")
        log(f"   float64 reference over {summary['error_over']} ({how})")
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
                rows.add(_row(wl, peer, "ok", median_ms=stats.median, min_ms=stats.min, max_ms=stats.max,
                                 q1_ms=q1, q3_ms=q3, times_ms=stats.times_ms, warmup_ms=stats.warmup_ms,
                                 estimate_s=est and est.seconds, max_rel_err=err, max_bias_rel_err=berr,
                                 out_dtype=str(out_w[0].dtype).replace("torch.", "")))
                log(f"   {peer.name}: median {stats.median:.1f} ms [{stats.min:.1f}, {stats.max:.1f}] "
                    f"err {err:.1e}")
                del first, out_w, out_b
            except Exception as e:  # noqa: BLE001
                rows.add(_row(wl, peer, "error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
                log(f"   {peer.name}: error: {e}")
            _free(device)
        del inputs, base, refs
        _free(device)


def stalled(row: Dict) -> bool:
    """Whether a measured row's timings spread so far that the machine stalled during them."""
    return row["max_ms"] > STALL_SPREAD * row["min_ms"]


def add_speedups(rows: List[Dict]) -> None:
    """speedup = baseline median / row median, only between two measured, steady rows; otherwise
    None, and `speedup_note` says why no number is quoted. err_ratio = row error / baseline error
    (same matrices, same reference; timing stalls do not matter to it), where both were measured."""
    by_wl: Dict[str, Dict] = {}
    for r in rows:
        if r["peer"] == peers_mod.BASELINE:
            by_wl[r["workload"]] = r
    for r in rows:
        b = by_wl.get(r["workload"])
        r["speedup"], r["speedup_note"], r["err_ratio"] = None, None, None
        if r["status"] != "ok" or b is None:
            continue
        if b["status"] == "ok" and b.get("max_rel_err", 0) > 0 and math.isfinite(b["max_rel_err"]):
            r["err_ratio"] = r["max_rel_err"] / b["max_rel_err"]
        if b["status"] != "ok":
            r["speedup_note"] = "baseline not measured" + (" (only estimated)" if b.get("estimate_s") else "")
        elif stalled(b) or stalled(r):
            which = [x for x, row in (("baseline", b), ("this peer", r)) if stalled(row)]
            r["speedup_note"] = (f"timings of {' and '.join(dict.fromkeys(which))} spread over "
                                 f"{STALL_SPREAD:g}x (a stall)")
        else:
            r["speedup"] = b["median_ms"] / r["median_ms"]


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
                   help=f"workloads (repeatable, comma-separated; default all but {', '.join(NAMED_ONLY)}): "
                        f"{', '.join(WORKLOADS)}")
    p.add_argument("--with", dest="with_", action="append", metavar="NAME[,NAME]",
                   help="add these workloads to the default set (or to --quick's)")
    p.add_argument("--peer", action="append", metavar="SUBSTRING",
                   help="only peers whose name contains one of these (the baseline is always kept)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per peer after 1 warm-up (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="each workload's quick subsample (ddpm 24, stylegan2 16, sd15 8, llm 2, tiny 2000 matrices; "
                        "llm-8b-p-block and the bf16 variants are never subsampled); "
                        f"without --workload, all but {', '.join(NOT_QUICK + NAMED_ONLY)}")
    p.add_argument("--max-matrices", type=int, default=None,
                   help="at most N evenly spaced matrices per workload (labelled as a subsample)")
    p.add_argument("--max-run-s", type=float, default=None,
                   help="skip a peer whose estimated single call takes longer (default cpu 60, cuda 20); "
                        "bf16/fp16 workloads time every peer")
    p.add_argument("--no-skip", action="store_true", help="run peers whatever their estimate")
    p.add_argument("--estimate-only", action="store_true",
                   help="only estimate each peer's time per call from small probes (plans a full run)")
    p.add_argument("--copies", type=int, default=3, help="rotated input copies (default 3)")
    p.add_argument("--copy-bytes", type=int, default=1 << 30,
                   help="at most this many bytes of input copies (default 1 GiB); big workloads get fewer")
    p.add_argument("--settle-s", type=float, default=0.5,
                   help="pause before each peer's timed calls, so BLAS threads of the previous one go idle")
    p.add_argument("--out", type=Path, default=ADHOC_DIR,
                   help=f"output folder (default {ADHOC_DIR}, untracked; results to commit go to benchmarks/results)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the workloads and peers and write the files, timing nothing (rehearses a run)")
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
    if args.workload and args.with_:
        p.error("--with adds to the default workloads; name them all with --workload instead")
    return args


def _stem(device: str, subsampled: bool, dry_run: bool = False) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    return f"{device}-{stamp}{'-subsample' if subsampled else ''}{'-dry-run' if dry_run else ''}"


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
    complete = all(r.get("complete", True) for r in runs)
    add_speedups(rows)
    print(report.markdown(env, workloads, rows, settings, complete=complete))
    if not args.no_write:
        stem = _stem(env["device"], any(w["subsample"] for w in workloads), settings.get("dry_run", False))
        paths = report.write(args.out, stem + "-merged", env, workloads, rows, settings, complete=complete)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    if args.device == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        log("--device cuda: torch sees no CUDA device")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 peers really in float32

    names = _split(args.workload) or [n for n in WORKLOADS if n not in NAMED_ONLY
                                      and not (args.quick and n in NOT_QUICK)]
    names += [n for n in _split(args.with_) if n not in names]
    if not args.workload:
        left_out = [n for n in NAMED_ONLY + (NOT_QUICK if args.quick else ()) if n not in names]
        if left_out:
            log(f"left out: {', '.join(left_out)} (name them with --workload or --with)")
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
            print(f"{n:20s} {s['dtype']:8s} {s['matrices']:7d} matrices {s['shapes']:5d} shapes {s['params'] / 1e6:9.2f}M params  "
                  f"largest {s['largest']:>11s}  quick {get_workload(n).quick}")
        for p in peer_list:
            print(f"peer: {p.name:40s} {'SKIP: ' + p.skip if p.skip else 'ok'}")
        return 0

    env = report.environment(args.device)
    flush_bytes = 0 if args.dry_run else _flush_bytes(args.device)
    settings = dict(repeats=args.repeats, warmup=1, copies=args.copies, copy_bytes=args.copy_bytes,
                    max_run_s=args.max_run_s, no_skip=args.no_skip, quick=args.quick,
                    max_matrices=args.max_matrices, settle_s=args.settle_s, flush_mib=flush_bytes >> 20, workloads=names,
                    peers=[p.name for p in peer_list], routes=dict(peers_mod.ROUTES), dry_run=args.dry_run)
    log(f"device {args.device}: {env['device_name']}; torch threads {env['torch_threads']}")
    chosen = []
    for n in names:
        wl = get_workload(n)
        chosen.append(wl.subsample(args.max_matrices if args.max_matrices is not None else (wl.quick if args.quick else None)))
    results = Results(args, env, settings, _stem(args.device, any(wl.is_subsample for wl in chosen), args.dry_run))
    flush = None if args.dry_run else harness.CacheFlusher(args.device, flush_bytes)
    for wl in chosen:
        if args.dry_run:
            dry_run_workload(wl, peer_list, args, results)
        else:
            run_workload(wl, peer_list, args, flush, results)

    paths = results.save(complete=True)
    print(report.markdown(env, results.workloads, results.rows, settings, complete=True))
    if paths:
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
