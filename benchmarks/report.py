"""The results: environment description, Markdown table, JSON, plot."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .workloads import dist_version as _version


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _numpy_blas() -> Optional[str]:
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return None


def environment(device: str) -> Dict:
    now = _dt.datetime.now().astimezone()
    env = {
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv)),
        "cwd": os.getcwd(),
        "device": device,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                       if k in os.environ},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "numpy_blas": _numpy_blas(),
        "cupy": _version("cupy") or _version("cupy-cuda12x") or _version("cupy-cuda13x") or _version("cupy-cuda11x"),
        "diffusers": _version("diffusers"),
        "torch_pruning": _version("torch-pruning"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_capability"] = f"{p.major}.{p.minor}"
        env["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        env["cuda_driver"] = _nvidia_smi("driver_version")
        env["device_name"] = env["gpu"]
    elif device == "cuda":
        env["device_name"] = "no GPU visible (a dry run)"
    else:
        env["device_name"] = env["cpu"]
    try:
        import svs_kernels

        env["svs_kernels_cuda_kernel"] = svs_kernels.has_cuda_kernel()
    except Exception:
        env["svs_kernels_cuda_kernel"] = None
    return env


def _nvidia_smi(field: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# --------------------------------------------------------------------------------------------
def fmt_ms(ms: Optional[float]) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_err(e: Optional[float]) -> str:
    if e is None:
        return "-"
    if not math.isfinite(e):
        return str(e)
    return f"{e:.1e}"


def fmt_speedup(row: Dict) -> str:
    """The measured speedup, or why none is quoted (benchmarks.run.add_speedups)."""
    s = row.get("speedup")
    if s is None:
        return f"not quoted: {row['speedup_note']}" if row.get("speedup_note") else "-"
    return f"{s:.2f}x" if s < 100 else f"{s:,.0f}x"


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}x"  # the goal is 1.05x: 3 decimals


LOW_PRECISION = ("bfloat16", "float16")
GOAL_PEER = "svs.refine auto"  # the route a workload's goal is about


def goal_lines(workloads: List[Dict], rows: List[Dict]) -> List[str]:
    """One line per workload with a goal (min speedup, max error ratio): met, missed, or not known."""
    lines = []
    for w in workloads:
        if not w.get("goal"):
            continue
        speed, ratio = w["goal"]
        head = (f"- goal, {w['label']}: {GOAL_PEER} at least {speed:g}x torch.linalg.svd per layer "
                f"(float32 SVD), with an error at most {ratio:g}x its")
        r = next((r for r in rows if r["workload"] == w["label"] and r["peer"] == GOAL_PEER), None)
        if r is None or r.get("speedup") is None or r.get("err_ratio") is None:
            why = "no row" if r is None else (r.get("speedup_note") or r.get("reason") or r["status"])
            lines.append(f"{head}: **not known** ({why})")
            continue
        missed = [f"speedup {r['speedup']:.2f}x < {speed:g}x"] if r["speedup"] < speed else []
        missed += [f"error ratio {r['err_ratio']:.3f}x > {ratio:g}x"] if r["err_ratio"] > ratio else []
        verdict = f"**missed**: {'; '.join(missed)}" if missed else "**met**"
        lines.append(f"{head}: {r['speedup']:.2f}x, error ratio {r['err_ratio']:.3f}x: {verdict}")
    return lines


def markdown(env: Dict, workloads: List[Dict], rows: List[Dict], settings: Dict, complete: bool = True) -> str:
    lines = [f"# svs.refine benchmark: {env['device']} ({env['device_name']})", ""]
    low = any(w.get("dtype") in LOW_PRECISION for w in workloads)  # adds the error-ratio column
    if not complete:
        lines += ["**INCOMPLETE**: the run had not finished when this was written (cut off by a time "
                  "limit, or still running): only the rows below were measured.", ""]
    if settings.get("dry_run"):
        lines += ["**DRY RUN**: nothing was timed (`--dry-run` rehearses the run's files).", ""]
    lines.append(f"- date: {env['date']}")
    lines.append(f"- command: `{env['command']}`")
    vers = ", ".join(f"{k} {env[k]}" for k in ("torch", "torch_cuda", "triton", "numpy", "cupy") if env.get(k))
    lines.append(f"- versions: python {env['python']}, {vers}; numpy BLAS: {env.get('numpy_blas')}")
    lines.append(f"- threads: torch {env['torch_threads']}, cpu_count {env['cpu_count']}"
                 + (f", env {env['thread_env']}" if env["thread_env"] else ""))
    if env["device"] == "cuda":
        lines.append(f"- GPU: {env.get('gpu')} (sm_{env.get('gpu_capability', '').replace('.', '')}, "
                     f"{env.get('gpu_memory_gib')} GiB, driver {env.get('cuda_driver')}); host CPU {env['cpu']}")
    lines.append(f"- git: {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}")
    lines.append(f"- method: {settings['warmup']} warm-up call on copy 0 (its result gives the error column), "
                 f"{settings['repeats']} timed calls cycling through rotated input copies, cache flush "
                 f"({settings['flush_mib']} MiB) before each; peers estimated over {settings['max_run_s']} s "
                 f"per call are skipped" + (" (on float32 workloads: bf16/fp16 ones time every peer)."
                                            if low else "."))
    if any(w["subsample"] for w in workloads):
        lines.append("- **SUBSAMPLED**: workloads marked [subsample k/N] use k evenly spaced matrices of N; "
                     "times are not those of the full workload.")
    lines.append("")
    lines.append("| workload | matrices | params | shapes | largest | input copies | error over |")
    lines.append("|---|---:|---:|---:|---|---:|---|")
    for w in workloads:
        lines.append(f"| {w['label']} | {w['matrices']} | {w['params'] / 1e6:.2f}M | {w['shapes']} | "
                     f"{w['largest']} | {w.get('copies', '-')} | {w.get('error_over', '-')} |")
    lines.append("")
    lines.append("| workload | peer | median ms | spread ms (min-max) | speedup vs torch.linalg.svd per layer "
                 "| max rel err |" + (" err / per-layer err |" if low else "") + " note |")
    lines.append("|---|---|---:|---|---:|---:|" + ("---:|" if low else "") + "---|")
    for r in rows:
        if r["status"] == "ok":
            spread = f"{fmt_ms(r['min_ms'])}-{fmt_ms(r['max_ms'])}"
            note = r.get("note", "")
        else:
            spread = "-"
            note = f"{r['status']}: {r['reason']}"
        ratio = f" {fmt_ratio(r.get('err_ratio'))} |" if low else ""
        lines.append(f"| {r['workload']} | {r['peer']} | {fmt_ms(r.get('median_ms'))} | {spread} | "
                     f"{fmt_speedup(r)} | {fmt_err(r.get('max_rel_err'))} |{ratio} {note} |")
    lines.append("")
    lines.append("max rel err: max over matrices of ||W' - W'_ref||_F / ||W'_ref||_F, W'_ref from a float64 "
                 "SVD of the same float32 input. A speedup is quoted only between two measured rows whose "
                 "timings are steady (max <= 2x min); never against an estimate.")
    if low:
        lines.append("")
        lines.append("bf16/fp16 workloads (name ending -bf16/-fp16): the inputs are the rounded weights; W'_ref is "
                     "computed from their exact values, and W' is each output as returned (in that dtype). The "
                     "SVD peers do what PiSSA-style code does, W.float(), float32 SVD, .to(W.dtype), casts "
                     "included in the time; svs.refine takes and returns the low-precision tensors. "
                     "err / per-layer err: this row's max rel err over that of torch.linalg.svd per layer.")
        goals = goal_lines(workloads, rows)
        lines += [""] + goals if goals else []
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict], workloads: List[Dict], path: Path, title: str) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    peers = []  # only measured, quoted speedups are drawn (benchmarks.run.add_speedups)
    for r in rows:
        if r["status"] == "ok" and r.get("speedup") and r["peer"] not in peers:
            peers.append(r["peer"])
    labels = [w["label"] for w in workloads]
    if not peers or not labels:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(labels) + 3), 5.0), dpi=100)
    width = 0.8 / len(peers)
    all_ys: List[float] = []
    for j, p in enumerate(peers):
        xs, ys = [], []
        for i, lab in enumerate(labels):
            for r in rows:
                if r["workload"] == lab and r["peer"] == p and r["status"] == "ok" and r.get("speedup"):
                    xs.append(i + (j - (len(peers) - 1) / 2) * width)
                    ys.append(r["speedup"])
        ax.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width, label=p)  # bars grow from 1x
        all_ys.extend(ys)
    ax.set_yscale("log")
    ax.set_ylim(min(all_ys + [1.0]) / 1.5, max(all_ys + [1.0]) * 1.5)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("speedup vs torch.linalg.svd per layer")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _replace(path: Path, text: str) -> None:
    """Write through a temporary and a rename, so a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write(out_dir: Path, stem: str, env: Dict, workloads: List[Dict], rows: List[Dict], settings: Dict,
          complete: bool = True) -> Dict[str, Path]:
    """md and json (the plot too once complete) as out_dir/stem.*; rewritten as rows come in."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png"}
    _replace(paths["md"], markdown(env, workloads, rows, settings, complete))
    _replace(paths["json"], json.dumps({"environment": env, "settings": settings, "complete": complete,
                                        "workloads": workloads, "results": rows}, indent=1, default=str) + "\n")
    title = f"{env['device']}: {env['device_name']}"
    if any(w.get("subsample") for w in workloads):
        title += "\nSUBSAMPLED: k of N matrices per workload, not full-workload times"
    if not complete or plot(rows, workloads, paths["png"], title) is None:
        del paths["png"]
    return paths
