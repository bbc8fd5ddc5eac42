"""Hugging Face style checkpoint directories, refined shard by shard within bounded memory.

A directory holds ``*.safetensors`` shards and an index (``model.safetensors.index.json``: which
shard holds each tensor), or one ``*.safetensors`` file, beside config and tokenizer files. The
output directory mirrors it byte for byte except for the refined tensors: each output shard keeps
the input's header (so the same names, order, dtypes and offsets), tensors that are not refined
are copied as bytes, and refined ones are written into their places one refine call at a time,
so memory holds one batch of matrices, never a whole shard or model. The index is rewritten,
every other file copied, and ``svs_refine.json`` records what was done (``svs inspect`` reads it).

The index's types, every shard header (:mod:`svs.safetensors_check`) and the other files are
checked before any work. The output is built in a temporary directory beside OUT_DIR, held by a
lock file (:func:`svs.io.claim`), and renamed at the end without replacing anything that appeared
meanwhile (unless ``force``): a failed or interrupted run leaves no OUT_DIR. A directory is one
source of the one pipeline (:class:`Directory`, :mod:`svs.refinement`); under ``torchrun`` its
batches are split over the ranks, each writing the tensors it refined; OUT_DIR must then be on a
file system every rank sees.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch

from . import __version__
from .cli_common import resolve_output
from .distributed import Ranks
from .interrupt import interruptible
from .io import CheckpointError, atomic_write, claim, rename_noreplace, temp_path
from .layouts import Layout, expand, of_directory
from .options import RefineOptions
from .pipeline_dir import is_pipeline, refine_pipeline
from .planner import Batch, Plan
from .presets import Role
from .refinement import run
from .report import ParamRecord, RefineReport
from .safetensors_check import DTYPES, Entry, json_type, open_regular, read_header, read_tensors, unique_keys

INDEX_SUFFIX = ".safetensors.index.json"
RECORD = "svs_refine.json"
FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_INDEX_BYTES = 64 << 20
MAX_OTHER_FILE_BYTES = 1 << 30  # config, tokenizer and other files copied beside the shards
_COPY_CHUNK = 16 << 20


@dataclasses.dataclass
class ShardedCheckpoint:
    """A checked checkpoint directory: ``entries`` in checkpoint order (shard, then file order)."""

    root: Path
    index: Optional[str]  # the index file's name; None for a single-file directory
    index_data: Dict[str, Any]
    shards: List[str]
    entries: Dict[str, Entry]
    sizes: Dict[str, int]  # each shard's size in bytes

    def meta(self) -> Dict[str, torch.Tensor]:
        """Every tensor as a meta tensor of its shape and dtype: what presets look at."""
        return {n: torch.empty(e.shape, dtype=DTYPES[e.dtype], device="meta") for n, e in self.entries.items()}

    def load(self, names: List[str]) -> Dict[str, torch.Tensor]:
        """The named tensors, read from their shards (CPU tensors; a shard that became shorter
        than its checked header is a :class:`~svs.io.CheckpointError`)."""
        out: Dict[str, torch.Tensor] = {}
        for shard in dict.fromkeys(self.entries[n].shard for n in names):
            out.update(read_tensors(self.root / shard, self.entries, [n for n in names if self.entries[n].shard == shard]))
        return {n: out[n] for n in names}


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
        index_data = _read_index(index_path)
        weight_map = index_data["weight_map"]
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (root / shard).exists():  # one that is not a regular file: read_header says so
                raise CheckpointError(f"{index_path} names shard {shard}, which is missing")
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors"))
        if len(shards) != 1:
            raise CheckpointError(f"{root} has no *{INDEX_SUFFIX} and {len(shards)} .safetensors files; "
                                  "expected an index, or one .safetensors file")
        weight_map = None
    entries: Dict[str, Entry] = {}
    sizes: Dict[str, int] = {}
    for shard in shards:
        start, found, _ = read_header(root / shard)
        sizes[shard] = max((e.end for e in found.values()), default=start)  # the file's size, as checked
        for name, entry in found.items():
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
    return ShardedCheckpoint(root, indexes[0] if indexes else None, index_data, shards, entries, sizes)


def _read_index(path: Path) -> Dict[str, Any]:
    """The index ``path`` checked for the types the output's index is built from: a JSON object
    whose ``weight_map`` maps tensor names to shard file names in the same folder, and whose
    ``metadata``, if present, is an object."""
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
        if len(raw) > MAX_INDEX_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_INDEX_BYTES >> 20} MiB; not a safetensors index")
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys(str(path)))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors index (not UTF-8 JSON)") from None
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CheckpointError(f"{path} is not a safetensors index (a JSON object with a weight_map object)")
    if not isinstance(data.get("metadata", {}), dict):
        raise CheckpointError(f"{path}: 'metadata' is a JSON {json_type(data['metadata'])}, not an object")
    for name, shard in data["weight_map"].items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{path}: weight_map[{name!r}] is {shard!r}, not a file name in {path.parent}")
    return data


def check_out_dir(src: Path, dst: Path, force: bool) -> None:
    """Refuses an OUT_DIR inside MODEL_DIR (or holding it), an existing one without ``force``,
    a file, or one whose parent folder is missing or not writable."""
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
    if not os.access(dst.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {dst}: folder {dst.parent} is not writable")


def refine_dir(
    src: Path,
    dst: Optional[Path],
    *,
    force: bool = False,
    device: str = "cpu",
    group: Any = None,
    report_path: Optional[Path] = None,
    **options: Any,
) -> RefineReport:
    """Refines the checkpoint directory ``src`` into ``dst`` (nothing written when ``dry_run``).

    ``options``: the fields of :class:`~svs.options.RefineOptions`, as for :func:`svs.refine_model`
    (``stats``: from the refinement's own decomposition; a dry run measures "before" with ``svdvals``).
    ``group``: a ``torch.distributed`` process group whose ranks all call this with the same
    arguments; each refines its share of the matrices on ``device``. ``report_path``: also write
    the report there as JSON, put in place with OUT_DIR (both or neither). Returns the whole report on
    every rank. Raises :class:`~svs.io.CheckpointError` for a bad input (one line, naming the file
    or tensor), ``ValueError`` for a bad output or selection, :class:`~svs.RefineError` when a
    tensor cannot be refined; OUT_DIR is then not created (nor its temporary folder left).
    """
    src, opts = Path(src), RefineOptions(**options)
    if is_pipeline(src):  # a diffusers pipeline folder: each component, as a directory of its own
        return refine_pipeline(src, dst, opts, force=force, device=device, group=group)
    ckpt = open_dir(src)
    others: List[Path] = []
    if not opts.dry_run:
        dst = resolve_output(Path(dst))
        check_out_dir(src, dst, force)
        others = other_files(ckpt)
    layouts = of_directory(src, ckpt.entries)  # layers not stored as (out, in...), from the config's modules
    if report_path is not None:
        report_path = resolve_output(report_path)
    output = None if opts.dry_run else dst
    return run(Directory(ckpt, layouts, device, opts, output, others, force, report_path), opts, group)


class Directory:
    """The :class:`~svs.refinement.Source` of a checkpoint directory: planned from its headers (meta
    tensors), each batch read from its shards onto ``device`` and written into its place in a
    temporary copy of the directory, renamed to ``dst`` at the end (nothing written when ``dst``
    is None: a dry run)."""

    one_call = False  # each batch is read from disk: memory holds one batch, never the whole model

    def __init__(self, ckpt: ShardedCheckpoint, layouts: List[Layout], device: str, options: RefineOptions,
                 dst: Optional[Path], others: List[Path], force: bool, report_path: Optional[Path]):
        self.ckpt, self.layouts, self.device, self.options = ckpt, layouts, device, options
        self.dst, self.others, self.force, self.report_path = dst, others, force, report_path
        self.tmp: Optional[Path] = None
        self.fold: Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]] = dict

    def tensors(self) -> Dict[str, torch.Tensor]:
        return expand(self.ckpt.meta(), self.layouts)[0]

    def check(self, selected: Dict[str, Role]) -> None:
        for name, role in selected.items():
            entry = self.ckpt.entries[name]
            if role in (Role.WEIGHT, Role.BIAS) and entry.dtype not in FLOATS:
                raise CheckpointError(
                    f"{self.ckpt.root / entry.shard}: {role.value} {name!r} has dtype {entry.dtype}, not floating point "
                    f"({', '.join(FLOATS)}); a quantized checkpoint? leave it out with --exclude")

    @contextlib.contextmanager
    def open(self, plan: Plan, ranks: Ranks) -> Iterator[None]:
        """Claims the outputs (rank 0) and stages the temporary copy; on any error removes it
        (and names OUT_DIR, not the temporary, in a write error)."""
        tmp = None if self.dst is None else ranks.from_rank0(temp_path(self.dst))
        held = contextlib.ExitStack()
        try:
            claims = [p for p in (self.dst, self.report_path) if p is not None]
            ranks.together(lambda: ranks.rank == 0 and [held.enter_context(claim(p)) for p in claims])
            if tmp is not None:
                _stage(self.ckpt, tmp, self.others, {n for b in plan.batches for n in b.names()}, ranks)
            self.tmp = tmp
            yield
        except BaseException as err:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError) and tmp is not None and str(err.filename or "").startswith(str(tmp)):
                raise OSError(err.errno, f"cannot write it ({err.strerror})", str(self.dst)) from err  # not the temporary
            raise
        finally:
            held.close()

    def load(self, batch: Batch) -> Dict[str, torch.Tensor]:
        # The read goes to svs.interrupt's worker: a Ctrl-C landing inside safetensors' conversion of
        # a tensor surfaced as an unrelated error ("could not determine the shape of ... UntypedStorage").
        loaded = interruptible(lambda: self.ckpt.load(batch.names()))
        views, self.fold = expand({n: t.to(self.device) for n, t in loaded.items()}, self.layouts)
        return views

    def write(self, batch: Batch, new: Dict[str, torch.Tensor]) -> None:
        for name, value in self.fold(new).items():
            _write_tensor(self.tmp, self.ckpt.entries[name], value)

    def finish(self, plan: Plan, report: RefineReport, ranks: Ranks) -> None:
        tmp, report_path = self.tmp, self.report_path
        if tmp is not None:
            ranks.together(lambda: ranks.rank == 0 and _finish(self.ckpt, tmp, self.dst, self.force, report, self.options,
                                                                ranks.world, report_path))
        elif report_path is not None and ranks.rank == 0:
            atomic_write(report_path, lambda t: Path(t).write_text(json.dumps(report.to_dict(), indent=1)), self.force)


def other_files(ckpt: ShardedCheckpoint) -> List[Path]:
    """The files the output gets copies of (config, tokenizer, ...; paths relative to the model
    folder, sub-folders walked), checked before any work: each a regular file, or a symlink to
    one, of at most MAX_OTHER_FILE_BYTES. A FIFO, a device (a symlink to /dev/zero), a socket, a
    symlink to a folder or to nothing, or a larger file is refused by name."""
    found: List[Path] = []

    def walk(folder: Path, rel: Path) -> None:
        for item in sorted(folder.iterdir()):
            if rel == Path() and (item.name in ckpt.shards or item.name == ckpt.index):
                continue
            if item.is_dir() and not item.is_symlink():
                walk(item, rel / item.name)
                continue
            try:
                st = item.stat()
            except OSError as err:
                raise CheckpointError(f"{item}: cannot copy it to the output ({err.strerror})") from None
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{item} is not a regular file (a folder link, FIFO, device or socket); "
                                      f"svs copies only regular files beside the shards: move it out of {ckpt.root}")
            if st.st_size > MAX_OTHER_FILE_BYTES:
                raise CheckpointError(f"{item} has {st.st_size} bytes, more than svs copies beside the shards "
                                      f"({MAX_OTHER_FILE_BYTES >> 20} MiB): move it out of {ckpt.root}")
            found.append(rel / item.name)

    walk(ckpt.root, Path())
    return found


def _copy_other(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` (data, mode and times, as ``shutil.copy2``), at most
    MAX_OTHER_FILE_BYTES of it even if it grew since :func:`other_files` checked it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open_regular(src) as fin, open(dst, "wb") as fout:
        left = MAX_OTHER_FILE_BYTES + 1
        while chunk := fin.read(min(_COPY_CHUNK, left)):
            fout.write(chunk)
            left -= len(chunk)
        if left == 0:
            raise CheckpointError(f"{src} grew past {MAX_OTHER_FILE_BYTES >> 20} MiB while it was copied")
    shutil.copystat(src, dst)


def _stage(ckpt: ShardedCheckpoint, tmp: Path, others: List[Path], refined: Set[str], ranks: Ranks) -> None:
    """Creates the temporary output: every other file copied (rank 0), and each shard (split over
    the ranks) holding its header and the bytes of the tensors that are not ``refined``."""
    def copy_others() -> None:
        tmp.mkdir()
        for rel in others:
            _copy_other(ckpt.root / rel, tmp / rel)

    ranks.together(lambda: ranks.rank == 0 and copy_others())
    holes = {s: sorted((e.start, e.end) for n, e in ckpt.entries.items() if e.shard == s and n in refined) for s in ckpt.shards}
    ranks.together(lambda: [_copy_except(ckpt.root / s, tmp / s, ckpt.sizes[s], holes[s])
                            for i, s in enumerate(ckpt.shards) if i % ranks.world == ranks.rank])


def _copy_except(src: Path, dst: Path, size: int, holes: List[Tuple[int, int]]) -> None:
    """``dst`` as a copy of ``src`` (``size`` bytes, as checked) whose byte ranges ``holes`` are
    left to be written later."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        pos = 0
        for begin, end in holes + [(size, size)]:
            fin.seek(pos)
            fout.seek(pos)
            while pos < begin:
                chunk = fin.read(min(_COPY_CHUNK, begin - pos))
                if not chunk:
                    raise CheckpointError(f"{src} changed while it was read: it ends at byte {pos}, "
                                          f"its header says {size} (truncated)")
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


def _finish(ckpt: ShardedCheckpoint, tmp: Path, dst: Path, force: bool, report: RefineReport, options: RefineOptions,
            world: int, report_path: Optional[Path]) -> None:
    """Writes the index and the record into ``tmp`` (and the report beside ``report_path``), then
    puts ``tmp`` in the place of ``dst`` and the report in its place: both or neither; without
    ``force`` only where nothing appeared meanwhile (``FileExistsError``)."""
    if ckpt.index is not None:
        index = dict(ckpt.index_data)
        index["metadata"] = {**index.get("metadata", {}),
                             "total_size": sum(e.end - e.start for e in ckpt.entries.values())}
        (tmp / ckpt.index).write_text(json.dumps(index, indent=2) + "\n")
    record = {"svs_version": __version__, "torch": torch.__version__, "source": ckpt.root.resolve().name,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "processes": world,
              **options.recorded(), "report": report.to_dict()}
    (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    report_tmp = None if report_path is None else temp_path(report_path)
    old = None
    try:
        if report_tmp is not None:
            try:
                report_tmp.write_text(json.dumps(report.to_dict(), indent=1))
            except OSError as err:
                raise OSError(err.errno, f"cannot write it ({err.strerror})", str(report_path)) from err
        if force and dst.exists():
            old = temp_path(dst, "old")
            os.rename(dst, old)
        _place(tmp, dst, force)
        try:
            if report_tmp is not None:
                _place(report_tmp, report_path, force)
        except BaseException:
            shutil.rmtree(dst)
            raise
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        if report_tmp is not None:
            report_tmp.unlink(missing_ok=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _place(tmp: Path, dst: Path, force: bool) -> None:
    """Renames ``tmp`` to ``dst``; without ``force`` never onto something that appeared meanwhile."""
    if force:
        os.replace(tmp, dst)
        return
    try:
        rename_noreplace(tmp, dst)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "it appeared while svs was writing it (another run?); not replaced, "
                              "pass --force to replace it", str(dst)) from None


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
    from .cli_common import check_output, check_report, refine_options
    from .distributed import from_env

    if not args.dry_run and not args.output:
        raise ValueError("give the output folder with -o (or --dry-run to only report)")
    output = None if args.dry_run else Path(args.output)
    if args.report:
        check_report(Path(args.report), Path(args.input), output)
        check_output(resolve_output(Path(args.report)), args.force, [])
    group, device = from_env(args.device)
    try:
        report = refine_dir(Path(args.input), output, force=args.force, device=device, group=group,
                            report_path=args.report and Path(args.report), **dataclasses.asdict(refine_options(args)))
    finally:
        if group is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        if not args.quiet:
            print(report)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print("dry run: nothing written" if args.dry_run else
              f"wrote {args.output} ({world} process{'es' if world > 1 else ''}; what was refined: {RECORD})")
    return 0

