"""The GPU check's bookkeeping (.ci/gpu_check.sh): versions, the stage summary, packing, and the
rehearsal's check of what comes back.

    python .ci/gpu_report.py versions                          # Python and package versions
    python .ci/gpu_report.py summary STAGE WORK USED_S BUDGET_S DRY   # the summary, printed last
    python .ci/gpu_report.py pack STAGE WORK OUT               # WORK -> at most 8 files in OUT
    python .ci/gpu_report.py check-out OUT LOG                 # what the device would return is whole

The device returns at most 8 files from $OUT, each at most 16 MiB, at most two folders deep, named
with letters, digits, '.', '_' and '-'; its output tail holds 12,000 characters. Packing keeps the
few files a reader opens first and puts everything else into one tar.gz.
"""
import importlib
import json
import platform
import re
import sys
import tarfile
from collections import Counter
from pathlib import Path

MAX_FILES, MAX_BYTES, MAX_DEPTH = 8, 16 << 20, 2
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
SUMMARY_CHARS = 10_000  # of the 12,000 the output tail holds
KEEP = {"1": ["versions.txt", "tests.jsonl"], "2": ["versions.txt"]}  # beside summary and archive
MERGED = {"benchmark.md": "*.md", "benchmark.json": "*.json", "benchmark.png": "*.png"}


def versions() -> None:
    print("python:", platform.python_version())
    try:
        import torch

        print("torch:", torch.__version__, "| torch.version.cuda:", torch.version.cuda,
              "| cuda available:", torch.cuda.is_available())
        if torch.cuda.is_available():
            print("device:", torch.cuda.get_device_name(0), "| capability:", torch.cuda.get_device_capability(0))
    except Exception as e:  # noqa: BLE001 - a broken torch is what this reports
        print("torch: does not import:", repr(e))
    for name in ("triton", "numpy", "cupy", "safetensors", "transformers", "pytest", "xdist", "pytest_timeout"):
        try:
            mod = importlib.import_module(name)
            print(f"{name}:", getattr(mod, "__version__", "?"))
        except Exception as e:  # noqa: BLE001
            print(f"{name}: not available ({type(e).__name__})")


def _steps(work: Path):
    path = work / "steps.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []
    return [(r[0], r[1], r[2]) for r in rows if len(r) == 3]


def _tests(work: Path) -> list:
    lines = []
    path = work / "tests.jsonl"
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            pass
    return lines


def summary(stage: str, work: Path, used: int, budget: int, dry: bool) -> str:
    out = [f"===== GPU check, stage {stage}{' (DRY RUN: no GPU step ran)' if dry else ''}: "
           f"{used} s of {budget} s ====="]
    for name, status, secs in _steps(work):
        out.append(f"  {name:28s} {secs:>4s} s  {status}")
    if stage == "1":
        recs = _tests(work)
        collected = max((r["collected"] for r in recs if "collected" in r), default=None)
        results = [r for r in recs if "outcome" in r]
        counts = Counter(r["outcome"] for r in results)
        ran = len({r["nodeid"] for r in results})
        not_run = f", {collected - ran} not run (time limit)" if collected and collected > ran else ""
        out.append(f"tests: {collected if collected is not None else '?'} collected; "
                   + ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
                               if counts[k]) + not_run)
        bad = [r for r in results if r["outcome"] in ("failed", "error", "xpassed")]
        for r in bad[:30]:
            out.append(f"  {r['outcome'].upper()} {r['nodeid']}: {r.get('message', '')[:200]}")
        if len(bad) > 30:
            out.append(f"  ... and {len(bad) - 30} more (tests.jsonl)")
        reasons = Counter(r.get("message", "")[:150] for r in results if r["outcome"] == "skipped")
        for reason, n in reasons.most_common(5):
            out.append(f"  skipped {n}: {reason}")
    else:
        md = next(iter(sorted((work / "merged").glob("*.md"))), None) if (work / "merged").exists() else None
        if md is None:
            out.append("benchmark: no merged table")
        else:
            table = [line for line in md.read_text().splitlines() if line.startswith("|") or line.startswith("**")]
            out.append("benchmark (benchmark.md):")
            out.extend(table)
    failed = [n for n, s, _ in _steps(work) if s.startswith("FAILED")]
    out.append(f"stage {stage}: {'FAILED: ' + ', '.join(failed) if failed else 'OK'}")
    text = "\n".join(out)
    if len(text) > SUMMARY_CHARS:  # keep the head (steps, counts) and the verdict
        text = text[:SUMMARY_CHARS - 200] + "\n  ... (cut; the full text is in the archive)\n" + out[-1]
    return text + "\n"


def pack(stage: str, work: Path, out: Path) -> None:
    """summary, the KEEP files and (stage 2) the merged table as named files; everything in one archive."""
    out.mkdir(parents=True, exist_ok=True)
    files = {f"summary-stage{stage}.txt": work / f"summary-stage{stage}.txt"}
    for name in KEEP[stage]:
        files[name] = work / name
    if stage == "2" and (work / "merged").exists():
        for name, pattern in MERGED.items():
            found = sorted((work / "merged").glob(pattern))
            if found:
                files[name] = found[0]
    for name, src in files.items():
        if src.exists() and src.stat().st_size <= MAX_BYTES:
            (out / name).write_bytes(src.read_bytes())
    def small(info):  # a runaway log must not push the archive over what the device returns
        return info if info.size <= 8 * MAX_BYTES else None

    with tarfile.open(out / f"stage{stage}.tar.gz", "w:gz") as tar:
        tar.add(work, arcname=f"stage{stage}", filter=small)


def check_out(out: Path, log: Path) -> list:
    """Why the device would not return all of OUT whole, or the summary is not the output's end."""
    problems = []
    files = [p for p in out.rglob("*") if p.is_file()]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files in {out}; the device returns {MAX_FILES}")
    for p in files:
        rel = p.relative_to(out)
        if p.stat().st_size > MAX_BYTES:
            problems.append(f"{rel}: {p.stat().st_size} bytes > {MAX_BYTES}")
        if len(rel.parts) - 1 > MAX_DEPTH:
            problems.append(f"{rel}: deeper than {MAX_DEPTH} folders")
        if not all(NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name the device does not return")
    summaries = sorted(out.glob("summary-stage*.txt"))
    if len(summaries) != 1:
        problems.append(f"expected one summary-stage*.txt in {out}, found {len(summaries)}")
    else:
        text = summaries[0].read_text().strip()
        if not text or not log.read_text().rstrip().endswith(text):
            problems.append(f"the output does not end with {summaries[0].name}")
    return problems


def main(argv) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "versions":
        versions()
    elif cmd == "summary":
        stage, work, used, budget, dry = args
        sys.stdout.write(summary(stage, Path(work), int(used), int(budget), dry == "1"))
    elif cmd == "pack":
        pack(args[0], Path(args[1]), Path(args[2]))
    elif cmd == "check-out":
        problems = check_out(Path(args[0]), Path(args[1]))
        for p in problems:
            print("check-out:", p)
        print(f"check-out: {args[0]}: {'OK' if not problems else 'FAILED'}")
        return 1 if problems else 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
