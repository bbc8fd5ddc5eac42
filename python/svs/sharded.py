"""Hugging Face style checkpoint directories, refined shard by shard within bounded memory.

A directory holds ``*.safetensors`` shards and an index (``model.safetensors.index.json``: which
shard holds each tensor), or one ``*.safetensors`` file, beside config and tokenizer files. The
output directory mirrors it byte for byte except for the refined tensors: each output shard keeps
the input's header (so the same names, order, dtypes and offsets), tensors that are not refined
are copied as bytes, and refined ones are written into their places one refine call at a time,
so memory holds one batch of matrices, never a whole shard or model. The index is rewritten,
every other file copied, and ``svs_refine.json`` records what was done (``svs inspect`` reads it).

The output is built in a temporary directory beside OUT_DIR and renamed at the end: a failed or
interrupted run leaves no OUT_DIR. Under ``torchrun`` the refine calls are split over the ranks
(:mod:`svs.distributed`), each writing the tensors it refined; OUT_DIR must then be on a file
system every rank sees.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import __version__
from .distributed import Ranks, assign, job_cost, merge_reports, plan
from .io import CheckpointError
from .interrupt import interruptible
from .tensors import _progress_bar, refine_tensors
from .presets import Role, select
from .report import ParamRecord, RefineReport

INDEX_SUFFIX = ".safetensors.index.json"
RECORD = "svs_refine.json"
FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
OTHERS = {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_COPY_CHUNK = 16 << 20


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a shard: its dtype (safetensors' name), shape and byte range in the file."""

    shard: str
    dtype: str
    shape: Tuple[int, ...]
    start: int
    end: int


@dataclasses.dataclass
class ShardedCheckpoint:
    """A checked checkpoint directory: ``entries`` in checkpoint order (shard, then file order)."""

    root: Path
    index: Optional[str]  # the index file's name; None for a single-file directory
    index_data: Dict[str, Any]
    shards: List[str]
    entries: Dict[str, Entry]

    def meta(self) -> Dict[str, torch.Tensor]:
        """Every tensor as a meta tensor of its shape and dtype: what presets look at."""
        return {n: torch.empty(e.shape, dtype=FLOATS.get(e.dtype) or OTHERS.get(e.dtype, torch.uint8), device="meta")
                for n, e in self.entries.items()}

    def load(self, names: List[str], device: str = "cpu") -> Dict[str, torch.Tensor]:
        """The named tensors, read lazily from their shards."""
        from safetensors import safe_open

        out: Dict[str, torch.Tensor] = {}
        for shard in dict.fromkeys(self.entries[n].shard for n in names):
            with safe_open(str(self.root / shard), framework="pt", device=device) as f:
                for n in names:
                    if self.entries[n].shard == shard:
                        out[n] = f.get_tensor(n)
        return {n: out[n] for n in names}


def _unique_keys(where: str):
    def hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise CheckpointError(f"{where}: tensor {key!r} is listed twice")
            seen[key] = value
        return seen
    return hook


def read_header(path: Path) -> Tuple[int, Dict[str, Entry], bytes]:
    """The data offset, entries and raw header bytes of a safetensors file, checked against its
    size (a truncated file is caught here, before any work)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, 1 << 28):
            raise CheckpointError(f"{path} is not a safetensors file (no valid header)")
        raw = f.read(n)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys(str(path)))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    entries: Dict[str, Entry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from None
        if dtype in ITEMSIZE and end - begin != math.prod(shape) * ITEMSIZE[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {list(shape)} {dtype}")
        entries[name] = Entry(path.name, dtype, shape, 8 + n + begin, 8 + n + end)
    needed = max((e.end for e in entries.values()), default=8 + n)
    if needed > size:
        raise CheckpointError(f"{path} is truncated: its header needs {needed} bytes, the file has {size}")
    return 8 + n, dict(sorted(entries.items(), key=lambda kv: kv[1].start)), raw


def open_dir(root: Path) -> ShardedCheckpoint:
    """Reads and checks the index and every shard header of ``root`` (no tensor data).

    Raises:
        CheckpointError: no index and not exactly one ``.safetensors`` file, an index that is not
            JSON, names a missing shard, lists a tensor twice or disagrees with the shards; a
            shard that is truncated or not safetensors.
    """
    root = Path(root)
    indexes = sorted(p.name for p in root.glob(f"*{INDEX_SUFFIX}"))
    index_data: Dict[str, Any] = {}
    if len(indexes) > 1:
        raise CheckpointError(f"{root} has several index files ({', '.join(indexes)}); refine one model directory at a time")
    if indexes:
        index_path = root / indexes[0]
        try:
            index_data = json.loads(index_path.read_text(), object_pairs_hook=_unique_keys(str(index_path)))
            weight_map = index_data["weight_map"]
            assert isinstance(weight_map, dict)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AssertionError):
            raise CheckpointError(f"{index_path} is not a safetensors index (JSON with a weight_map)") from None
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (root / shard).is_file():
                raise CheckpointError(f"{index_path} names shard {shard}, which is missing")
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors"))
        if len(shards) != 1:
            raise CheckpointError(f"{root} has no *{INDEX_SUFFIX} and {len(shards)} .safetensors files; "
                                  "expected an index, or one .safetensors file")
        weight_map = None
    entries: Dict[str, Entry] = {}
    for shard in shards:
        for name, entry in read_header(root / shard)[1].items():
            if name in entries:
                raise CheckpointError(f"{root}: tensor {name!r} is listed twice ({entries[name].shard} and {shard})")
            entries[name] = entry
    for name, entry in entries.items():
        if weight_map is not None and weight_map.get(name) != entry.shard:
            raise CheckpointError(f"{root / entry.shard} holds {name!r}, which the index "
                                  + (f"puts in {weight_map[name]}" if name in weight_map else "does not list"))
    for name, shard in (weight_map or {}).items():
        if name not in entries:
            raise CheckpointError(f"{root / indexes[0]} lists {name!r} in {shard}, which does not hold it")
    return ShardedCheckpoint(root, indexes[0] if indexes else None, index_data, shards, entries)


def check_out_dir(src: Path, dst: Path, force: bool) -> None:
    """Refuses an OUT_DIR inside MODEL_DIR (or holding it), an existing one without ``force``,
    a file, or one whose parent folder is missing."""
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise ValueError(f"output {dst} is inside the model directory {src}; choose a folder outside it")
    if d in s.parents:
        raise ValueError(f"output {dst} holds the model directory {src}; choose another folder")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} exists and is a file; give a folder")
    if dst.exists() and not force:
        raise ValueError(f"{dst} exists; pass --force to replace it")
    if not dst.parent.is_dir():
        raise ValueError(f"cannot write {dst}: folder {dst.parent} does not exist")


def refine_dir(
    src: Path,
    dst: Optional[Path],
    *,
    preset: str = "generic",
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    map: str = "sqrt",
    method: str = "auto",
    eps: float = 1e-8,
    certify: bool = True,
    dry_run: bool = False,
    stats: bool = True,
    force: bool = False,
    device: str = "cpu",
    group: Any = None,
    progress: bool = False,
) -> RefineReport:
    """Refines the checkpoint directory ``src`` into ``dst`` (nothing written when ``dry_run``).

    ``stats``: record the extreme singular values before and after (from the refinement's own
    decomposition, as in :func:`svs.refine_model`; a dry run measures "before" with ``svdvals``).
    ``group``: a ``torch.distributed`` process group whose ranks all call this with the same
    arguments; each refines its share of the matrices on ``device``. Returns the whole report on
    every rank. Raises :class:`~svs.io.CheckpointError` for a bad input (one line, naming the file
    or tensor), ``ValueError`` for a bad output or selection, :class:`~svs.RefineError` when a
    tensor cannot be refined; OUT_DIR is then not created (nor its temporary folder left).
    """
    src = Path(src)
    ranks = Ranks.of(group)
    ckpt = open_dir(src)
    if not dry_run:
        check_out_dir(src, Path(dst), force)
    meta = ckpt.meta()
    _check_dtypes(ckpt, select(meta, preset, include, exclude))
    jobs, skipped = plan(meta, preset, include, exclude)
    if not jobs:
        refine_tensors(meta, preset=preset, include=include, exclude=exclude)  # its "selects no weight" error
    owner = assign([job_cost(meta, job) for job in jobs], ranks.world)
    kwargs = dict(preset=preset, include=include, exclude=exclude, map=map, method=method, eps=eps, dry_run=dry_run,
                  stats=stats, certify=certify)
    tmp = None if dry_run else Path(dst).parent / ranks.from_rank0(f".{Path(dst).name}.svs-{secrets.token_hex(4)}.tmp")
    try:
        if tmp is not None:
            _stage(ckpt, tmp, jobs, skipped, ranks)
        start = time.perf_counter()
        mine = [job for job, rank in zip(jobs, owner) if rank == ranks.rank]
        matrices = sum(meta[n].ndim >= 2 and n not in skipped for job in mine for n in job)

        def my_share() -> List[RefineReport]:
            with _progress_bar(matrices, progress and ranks.rank == 0) as bar:
                return [_refine_job(ckpt, job, tmp, device, kwargs, bar.update) for job in mine]

        parts = ranks.together(my_share)
        all_parts = [p for ps in ranks.gather(parts) for p in ps]
        seconds = max(ranks.gather(time.perf_counter() - start))
        report = merge_reports(all_parts, list(ckpt.entries), all_parts[0], seconds)
        if tmp is not None:
            ranks.together(lambda: ranks.rank == 0 and _finish(ckpt, tmp, Path(dst), report, kwargs, ranks.world))
        return report
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refine_job(ckpt: ShardedCheckpoint, job: List[str], tmp: Optional[Path], device: str,
                kwargs: Dict[str, Any], on_done: Callable[[int], Any]) -> RefineReport:
    """One refine call: loads the job's tensors, refines them, writes them into ``tmp``."""
    # The read goes to svs.interrupt's worker: a Ctrl-C landing inside safetensors' conversion of
    # a tensor surfaced as an unrelated error ("could not determine the shape of ... UntypedStorage").
    loaded = interruptible(lambda: ckpt.load(job))
    new, report = refine_tensors({n: t.to(device) for n, t in loaded.items()}, **kwargs)
    for name, value in new.items():
        _write_tensor(tmp, ckpt.entries[name], value)
    on_done(len(report.weights))
    return report


def _check_dtypes(ckpt: ShardedCheckpoint, roles: Dict[str, Role]) -> None:
    for name, role in roles.items():
        entry = ckpt.entries[name]
        if role in (Role.WEIGHT, Role.BIAS) and entry.dtype not in FLOATS:
            raise CheckpointError(
                f"{ckpt.root / entry.shard}: {role.value} {name!r} has dtype {entry.dtype}, not floating point "
                f"({', '.join(FLOATS)}); a quantized checkpoint? leave it out with --exclude")


def _stage(ckpt: ShardedCheckpoint, tmp: Path, jobs: List[List[str]], skipped: Dict[str, str], ranks: Ranks) -> None:
    """Creates the temporary output: every other file copied (rank 0), and each shard (split over
    the ranks) holding its header and the bytes of the tensors that are not refined."""
    def others() -> None:
        tmp.mkdir()
        for item in sorted(ckpt.root.iterdir()):
            if item.name not in ckpt.shards and item.name != ckpt.index:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)

    ranks.together(lambda: ranks.rank == 0 and others())
    refined = {n for job in jobs for n in job if n not in skipped}
    holes = {s: sorted((e.start, e.end) for n, e in ckpt.entries.items() if e.shard == s and n in refined) for s in ckpt.shards}
    ranks.together(lambda: [_copy_except(ckpt.root / s, tmp / s, holes[s])
                            for i, s in enumerate(ckpt.shards) if i % ranks.world == ranks.rank])


def _copy_except(src: Path, dst: Path, holes: List[Tuple[int, int]]) -> None:
    """``dst`` as a copy of ``src`` whose byte ranges ``holes`` are left to be written later."""
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        pos = 0
        for begin, end in holes + [(size, size)]:
            fin.seek(pos)
            fout.seek(pos)
            while pos < begin:
                chunk = fin.read(min(_COPY_CHUNK, begin - pos))
                fout.write(chunk)
                pos += len(chunk)
            pos = end
        fout.truncate(size)


def _write_tensor(tmp: Optional[Path], entry: Entry, value: torch.Tensor) -> None:
    if tmp is None:
        return
    data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    assert data.nbytes == entry.end - entry.start, (entry, value.shape, value.dtype)
    with open(tmp / entry.shard, "r+b") as f:
        f.seek(entry.start)
        f.write(data)


def _finish(ckpt: ShardedCheckpoint, tmp: Path, dst: Path, report: RefineReport, kwargs: Dict[str, Any], world: int) -> None:
    """Writes the index and the record into ``tmp``, then puts ``tmp`` in the place of ``dst``."""
    if ckpt.index is not None:
        index = dict(ckpt.index_data)
        index["metadata"] = {**index.get("metadata", {}),
                             "total_size": sum(e.end - e.start for e in ckpt.entries.values())}
        (tmp / ckpt.index).write_text(json.dumps(index, indent=2) + "\n")
    record = {"svs_version": __version__, "torch": torch.__version__, "source": str(ckpt.root.resolve()),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "processes": world,
              **{k: v for k, v in kwargs.items() if k not in ("dry_run", "stats")}, "report": report.to_dict()}
    (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.svs-old-{secrets.token_hex(4)}"
        os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_record(path: Path) -> Optional[RefineReport]:
    """The report ``svs refine`` recorded in the directory ``path``, or None."""
    file = Path(path) / RECORD
    if not file.is_file():
        return None
    data = json.loads(file.read_text())["report"]
    records = [ParamRecord(**{**r, "shape": tuple(r["shape"])}) for r in data["records"]]
    return RefineReport(records, data["map"], data["method"], data["device"], data["dry_run"], data["totals"]["seconds"])


def cmd_refine_dir(args: Any) -> int:
    """``svs refine MODEL_DIR -o OUT_DIR``; under ``torchrun`` (``WORLD_SIZE`` > 1) every process
    runs it and refines its share, and rank 0 prints."""
    import sys

    from .cli_common import check_output
    from .distributed import from_env

    if not args.dry_run and not args.output:
        raise ValueError("give the output folder with -o (or --dry-run to only report)")
    if args.report:
        check_output(Path(args.report), args.force, [])
    group, device = from_env(args.device)
    try:
        report = refine_dir(Path(args.input), None if args.dry_run else Path(args.output), preset=args.preset,
                            include=args.include, exclude=args.exclude, map=args.map, method=args.method,
                            certify=not args.no_certify, dry_run=args.dry_run, force=args.force, device=device, group=group,
                            progress=not args.quiet and sys.stderr.isatty())
    finally:
        if group is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        if args.report:
            from .io import atomic_write

            atomic_write(args.report, lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=1)))
        if not args.quiet:
            print(report)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print("dry run: nothing written" if args.dry_run else
              f"wrote {args.output} ({world} process{'es' if world > 1 else ''}; what was refined: {RECORD})")
    return 0


def cmd_inspect_dir(args: Any) -> int:
    """``svs inspect OUT_DIR``: what ``svs refine`` recorded there."""
    path = Path(args.input)
    report = read_record(path)
    if report is None:
        raise ValueError(f"{path} has no {RECORD} (not written by svs refine); inspect one of its .safetensors files")
    record = json.loads((path / RECORD).read_text())
    print(report)
    print(f"refined by svs {record['svs_version']} (torch {record['torch']}) on {record['date']} from {record['source']}: "
          f"preset {record['preset']}, map {record['map']}, method {record['method']}, {record['processes']} process(es)")
    return 0
