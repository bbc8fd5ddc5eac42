"""Timing: warm-up, repeats over rotated input copies, cache flush, time estimates from probes.

CPU runs are timed with time.perf_counter around the call; CUDA runs with CUDA events on the
current stream (recorded around the call, read after a synchronize), which also cover work the
peer leaves queued when it returns. The garbage collector is off inside timed calls.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .workloads import Workload, stride_indices


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class CacheFlusher:
    """Writes a buffer larger than the last-level cache (L2 on a GPU) before each timed call."""

    def __init__(self, device: str, nbytes: int):
        self.buf = torch.empty(max(1, nbytes // 4), dtype=torch.float32, device=device) if nbytes else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.fill_(1.0)


def timed_call(fn: Callable, args: Tuple, device: str) -> Tuple[float, object]:
    """(milliseconds, result) of one call."""
    synchronize(device)
    enabled = gc.isenabled()
    gc.disable()
    try:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            out = fn(*args)
            ms = (time.perf_counter() - t0) * 1e3
    finally:
        if enabled:
            gc.enable()
    return ms, out


@dataclasses.dataclass
class Stats:
    times_ms: List[float]
    warmup_ms: float

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min(self) -> float:
        return min(self.times_ms)

    @property
    def max(self) -> float:
        return max(self.times_ms)

    @property
    def iqr(self) -> Tuple[float, float]:
        if len(self.times_ms) < 2:
            return self.times_ms[0], self.times_ms[0]
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[0], q[2]


def measure(fn: Callable, copies: Sequence[Tuple[list, list]], repeats: int, device: str,
            flush: CacheFlusher) -> Tuple[Stats, object]:
    """One warm-up call on copy 0 (its result is returned, for the accuracy check), then
    `repeats` timed calls cycling through copies 1, 2, ..., 0, 1, ... with a cache flush before each."""
    flush()
    warm_ms, first = timed_call(fn, copies[0], device)
    times = []
    for i in range(repeats):
        args = copies[(i + 1) % len(copies)]
        flush()
        ms, out = timed_call(fn, args, device)
        del out
        times.append(ms)
    return Stats(times, warm_ms), first


@dataclasses.dataclass
class Estimate:
    seconds: float  # estimated seconds of one call on the whole workload
    probe_matrices: int
    probe_seconds: float
    exact: bool  # the probe was the whole workload
    output: object = dataclasses.field(default=None, repr=False)  # its result, when exact and asked for

    def describe(self) -> str:
        how = "measured" if self.exact else (
            f"estimated from {self.probe_matrices} matri{'x' if self.probe_matrices == 1 else 'ces'} "
            f"({self.probe_seconds:.2g} s)")
        return f"{fmt_seconds(self.seconds)} per call, {how}"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def estimate(fn: Callable, workload: Workload, device: str, limit_s: float,
             probe_cache: Dict[Tuple[int, ...], Tuple[list, list]], target_s: float = 0.5,
             min_decisive_s: float = 0.2, keep_output: bool = False) -> Estimate:
    """Seconds one call of `fn` takes on the whole workload, from calls on growing probes:
    the cheapest matrix (one untimed call first), then evenly spaced subsamples of
    4, 16, 64, ... matrices, until a probe takes `target_s`, the estimate exceeds `limit_s` (from a
    probe of at least `min_decisive_s`), or the probe is the whole workload. Probes shorter than
    `target_s` are timed twice and the best kept. Extrapolates with the cost model Workload.costs()."""
    costs = workload.costs()
    total = sum(costs)
    n = len(workload)
    cheapest = min(range(n), key=costs.__getitem__)
    plans: List[List[int]] = [[cheapest]]
    k = 4
    while k < n:
        plans.append(stride_indices(n, k))
        k *= 4
    plans.append(list(range(n)))
    first = True
    est = None
    for idx in plans:
        key = tuple(idx)
        if key not in probe_cache:  # the whole workload is kept there too, for the timed runs
            probe_cache[key] = workload.subset(idx).materialize(device) if len(idx) < n else workload.materialize(device)
        args = probe_cache[key]
        if first:
            timed_call(fn, args, device)  # one-time initialisation (libraries, handles)
            first = False
        ms, out = timed_call(fn, args, device)
        if ms < 1e3 * target_s:  # short probes: best of two, so one stall (a busy machine) cannot
            del out             # blow up the extrapolation
            ms2, out = timed_call(fn, args, device)
            ms = min(ms, ms2)
        seconds = ms / 1e3
        exact = len(idx) == n
        scale = 1.0 if exact else total / sum(costs[i] for i in idx)
        est = Estimate(seconds * scale, len(idx), seconds, exact, out if exact and keep_output else None)
        del out
        # A short probe says little: per-call overhead, and on a shared or CPU-quota-limited
        # machine a single stall of ~100 ms, would be multiplied by the extrapolation.
        if exact or seconds >= target_s or (est.seconds > limit_s and seconds >= min_decisive_s):
            break
    assert est is not None
    return est


def memory_available(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def accuracy_subset(workload: Workload, ref_estimate_s: float, limit_s: float, mem_bytes: int) -> List[int]:
    """Indices whose float64 reference is computed: all, or an evenly spaced subsample whose
    estimated cost fits in `limit_s` and whose float64 results fit in `mem_bytes`."""
    n = len(workload)
    frac = 1.0
    if ref_estimate_s > limit_s:
        frac = min(frac, limit_s / ref_estimate_s)
    need = 8 * workload.params
    if need > mem_bytes:
        frac = min(frac, mem_bytes / need)
    if frac >= 1.0:
        return list(range(n))
    return stride_indices(n, max(1, math.floor(n * frac)))
