"""diffusers pipeline folders (``save_pretrained`` of a pipeline): ``model_index.json`` beside one
folder per component (``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/``, ...).

Each component that holds safetensors weights is refined as a checkpoint directory of its own
(:func:`svs.sharded.refine_dir`, with the layouts of its own ``config.json``); a component in which
the preset selects no weight, and every other file and folder, is copied as it is. The output is
built in a temporary folder beside OUT_DIR and renamed at the end, as for a single model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import __version__
from .io import CheckpointError
from .options import RefineOptions
from .presets import Role, select
from .report import RefineReport

MODEL_INDEX = "model_index.json"
RECORD = "svs_refine.json"  # as svs.sharded writes it (svs inspect reads it)


def is_pipeline(root: Path) -> bool:
    return (Path(root) / MODEL_INDEX).is_file()


def components(root: Path) -> List[str]:
    """The components of the pipeline ``root`` that hold weights, in ``model_index.json`` order.

    Raises:
        CheckpointError: ``model_index.json`` is not JSON; a component holds weights only in
            formats other than safetensors (named, with its files); no component holds weights.
    """
    root = Path(root)
    try:
        index = json.loads((root / MODEL_INDEX).read_text())
        assert isinstance(index, dict)
    except (UnicodeDecodeError, json.JSONDecodeError, AssertionError):
        raise CheckpointError(f"{root / MODEL_INDEX} is not a diffusers model index (a JSON object)") from None
    found, other = [], {}
    for name in index:
        folder = root / name
        if name.startswith("_") or not folder.is_dir():
            continue
        if any(folder.glob("*.safetensors")):
            found.append(name)
        else:
            files = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            if files:
                other[name] = files
    if other:
        listed = "; ".join(f"{n}: {', '.join(f)}" for n, f in other.items())
        raise CheckpointError(f"{root}: components with no .safetensors weights ({listed}); save the pipeline "
                              "with safe_serialization=True")
    if not found:
        raise CheckpointError(f"{root} is a diffusers pipeline ({MODEL_INDEX}) in which no component holds "
                              ".safetensors weights")
    return found


def refine_pipeline(src: Path, dst: Optional[Path], options: RefineOptions, *, force: bool = False, device: str = "cpu",
                    group: Any = None) -> RefineReport:
    """Refines every component of the pipeline ``src`` that has weights the preset selects into
    ``dst`` (nothing written when ``dry_run``); arguments as for :func:`svs.sharded.refine_dir`.
    The report's names are ``<component>/<tensor>``; components the preset selects nothing in
    are listed in its ``left_alone``.

    Raises:
        CheckpointError: see :func:`components`.
        ValueError: the preset selects no weight in any component (the message names them), or
            a bad output (as for a single model).
    """
    from .distributed import Ranks
    from .sharded import check_out_dir, open_dir, refine_dir

    src, preset, include, exclude, dry_run = Path(src), options.preset, options.include, options.exclude, options.dry_run
    names = components(src)
    chosen = [c for c in names if any(r is Role.WEIGHT for r in select(open_dir(src / c).meta(), preset, include, exclude).values())]
    if not chosen:
        raise ValueError(f"preset {preset!r} with include={include!r}, exclude={exclude!r} selects no weight in any "
                         f"component of {src} ({', '.join(names)})")
    if not dry_run:
        check_out_dir(src, Path(dst), force)
    ranks = Ranks.of(group)
    tmp = None if dry_run else Path(dst).parent / ranks.from_rank0(f".{Path(dst).name}.svs-{secrets.token_hex(4)}.tmp")
    try:
        if tmp is not None:
            ranks.together(lambda: ranks.rank == 0 and _copy_others(src, tmp, chosen))
        reports = {c: refine_dir(src / c, None if tmp is None else tmp / c, device=device, group=group,
                                 **dataclasses.asdict(options)) for c in chosen}
        report = _merged(reports, [c for c in names if c not in chosen])
        if tmp is not None:
            ranks.together(lambda: ranks.rank == 0 and _finish(src, tmp, Path(dst), report, options, ranks.world))
        return report
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_others(src: Path, tmp: Path, refined: List[str]) -> None:
    tmp.mkdir()
    for item in sorted(src.iterdir()):
        if item.name not in refined:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)


def _merged(reports: Dict[str, RefineReport], unselected: List[str]) -> RefineReport:
    first = next(iter(reports.values()))
    records = [dataclasses.replace(r, name=f"{c}/{r.name}") for c, rep in reports.items() for r in rep.records]
    left: Dict[str, List[str]] = {}
    for c, rep in reports.items():
        for reason, names in rep.left_alone.items():
            left.setdefault(reason, []).extend(f"{c}/{n}" for n in names)
    if unselected:
        left["component in which the preset selects no weight (copied as it is)"] = unselected
    return dataclasses.replace(first, records=records, seconds=sum(r.seconds for r in reports.values()),
                               left_alone=left)


def _finish(src: Path, tmp: Path, dst: Path, report: RefineReport, options: RefineOptions, world: int) -> None:
    """Writes the pipeline's record into ``tmp``, then puts ``tmp`` in the place of ``dst``."""
    record = {"svs_version": __version__, "torch": torch.__version__, "source": src.resolve().name,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "processes": world,
              **options.recorded(),
              "report": report.to_dict()}
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
