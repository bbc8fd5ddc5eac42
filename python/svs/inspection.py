"""``svs inspect``: the spectrum facts that say whether a model looks like the case SVS targets.

Reads anything ``svs refine`` reads (a ``.safetensors`` or ``.pt`` file, a Hugging Face model
directory, a diffusers pipeline folder, or a directory ``svs refine`` wrote) one weight at a time:
safetensors are opened lazily, so memory holds one tensor (one layer's stored tensors), never a
shard. Each weight is taken as the matrix SVS decomposes (:mod:`svs.layouts`, from the
directory's ``config.json`` or the pickled module) and described by its condition number
``s_max / s_min`` over the singular values above the operator's rank tolerance
(``max(m, n) * eps * s_max``) and the top singular value's energy share ``s_1^2 / sum s_i^2``,
before and after SVS (the operator's map applied to the spectrum: :func:`svs.map_spectrum`).
The verdict sets them against the paper's premise (a few dominant singular values, about 100x
the smallest) and against what ``docs/results/svs_experiment/results.md`` measured on the bundled
digits DDPM, where SVS did not help.

Singular values are computed in float64 for float32/float64 weights (as the operator does, so the
numbers are the operator's) and in float32 for float16/bfloat16 weights (their own precision is
coarser; the rank tolerance then uses float32's eps).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import io
from .layouts import Layout, expand, of_directory, of_module
from .presets import Role, select
from .report import counted
from .planner import skip_unusable

# The paper's pattern: a few dominant singular values, about this many times the smallest.
PAPER_KAPPA = 100.0
# docs/results/svs_experiment/results.md, section 4: the bundled digits DDPM pruned 50 % (Taylor),
# median over its 64 refined weights; SVS did not beat plain fine-tuning there.
DIGITS = {"kappa": 4.54, "share": 0.120}


@dataclasses.dataclass
class WeightStats:
    """One weight: the shape of the matrix decomposed, its numerical rank, and kappa / share
    before and after SVS (None where unknown: a refined directory's record has no share)."""

    name: str
    shape: Tuple[int, ...]
    rank: int
    kappa: Optional[float]
    share: Optional[float]
    kappa_after: Optional[float]
    share_after: Optional[float]


def numerical_spectrum(w: torch.Tensor) -> torch.Tensor:
    """Singular values of ``w`` flattened to ``(shape[0], -1)``, descending, float64 on the CPU,
    with those below ``max(m, n) * eps * s_max`` set to zero (eps of the precision computed in)."""
    dtype = torch.float64 if w.dtype in (torch.float64, torch.float32) else torch.float32
    m = w.detach().reshape(w.shape[0], -1).to(dtype)
    s = torch.linalg.svdvals(m).to(device="cpu", dtype=torch.float64)
    if len(s) and s[0] > 0:
        s[s < max(m.shape) * torch.finfo(dtype).eps * s[0]] = 0
    return s


def kappa_share(s: torch.Tensor) -> Tuple[float, float]:
    """``s_max / s_min`` over the nonzero values of ``s`` (inf for a zero matrix) and ``s_1^2 / sum s_i^2``."""
    nz = s[s > 0]
    if not len(nz):
        return float("inf"), 0.0
    return float(nz[0] / nz[-1]), float(nz[0] ** 2 / (nz**2).sum())


@dataclasses.dataclass
class Source:
    """Stored tensors of one checkpoint: their meta tensors, the layouts of the layers not stored
    ``(out, in...)``, and how to read some of them (lazily for safetensors)."""

    meta: Dict[str, torch.Tensor]
    layouts: List[Layout]
    load: Callable[[List[str]], Dict[str, torch.Tensor]]
    prefix: str = ""


def sources(path: Path, trust_pickle: bool = False) -> List[Source]:
    """The checkpoints at ``path``: one for a file or model directory, one per weighted component
    of a diffusers pipeline folder (names prefixed ``<component>/``)."""
    from .pipeline_dir import components, is_pipeline
    from .safetensors_check import DTYPES, read_header, read_tensors
    from .sharded import open_dir

    path = Path(path)
    if path.is_dir():
        if is_pipeline(path):
            return [dataclasses.replace(sources(path / c)[0], prefix=f"{c}/") for c in components(path)]
        ckpt = open_dir(path)
        return [Source(ckpt.meta(), of_directory(path, ckpt.entries), ckpt.load)]
    if path.suffix == ".safetensors":
        entries = read_header(path)[1]  # checks the header and the size; reads no tensor
        meta = {n: torch.empty(e.shape, dtype=DTYPES[e.dtype], device="meta") for n, e in entries.items()}
        return [Source(meta, of_directory(path.parent, meta), lambda names: read_tensors(path, entries, names))]
    ckpt = io.load(path, trust_pickle=trust_pickle)  # a .pt file is one pickle: read whole
    tensors = ckpt.tensors()
    layouts = of_module(ckpt.obj) if isinstance(ckpt.obj, torch.nn.Module) else of_directory(path.parent, tensors)
    return [Source({n: t.to("meta") for n, t in tensors.items()}, layouts, lambda names: {n: tensors[n] for n in names})]



def selected(source: Source, preset: str, include: Optional[str], exclude: Optional[str]
             ) -> Tuple[List[Tuple[str, Tuple[int, ...], Tuple[str, ...]]], Dict[str, str]]:
    """The weights the preset selects in ``source``, as ``(name, matrix shape, stored names)`` in
    checkpoint order, and the skipped ones with the reason (empty, not floating point)."""
    views = expand(source.meta, source.layouts)[0]
    stored_of = {part: layout.stored for layout in source.layouts if all(s in source.meta for s in layout.stored)
                 for part in layout.parts({s: source.meta[s] for s in layout.stored})}
    roles = select(views, preset, include, exclude)
    skipped = skip_unusable(views, roles)
    weights = [(n, tuple(views[n].shape), stored_of.get(n, (n,))) for n, r in roles.items() if r is Role.WEIGHT]
    return weights, {n: why for n, why in skipped.items() if views[n].ndim >= 2}


def spectra(source: Source, weights: Sequence[Tuple[str, Tuple[int, ...], Tuple[str, ...]]]
            ) -> Iterator[Tuple[str, torch.Tensor]]:
    """``(name, numerical spectrum)`` of each weight, reading one layer's stored tensors at a time."""
    loaded: Tuple[Tuple[str, ...], Dict[str, torch.Tensor]] = ((), {})
    for name, _, stored in weights:
        if loaded[0] != stored:
            tensors = source.load(list(stored))
            loaded = (stored, expand(tensors, [l for l in source.layouts if l.stored == stored])[0])
        yield name, numerical_spectrum(loaded[1][name])


def describe(stats: Sequence[WeightStats], refined: bool, map: str) -> List[str]:
    """The summary lines: median and spread of kappa and the top share before and after, and the verdict."""
    def finite(values) -> List[float]:
        return [v for v in values if v is not None and v != float("inf")]

    def quantiles(values: List[float]) -> List[float]:
        return torch.quantile(torch.tensor(values, dtype=torch.float64),
                              torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64)).tolist()

    def spread(values: List[float]) -> str:
        q = quantiles(values)
        return f"{q[0]:.3g} [{q[1]:.3g}, {q[2]:.3g}]"

    kappas, shares = finite(s.kappa for s in stats), finite(s.share for s in stats)
    after_k, after_s = finite(s.kappa_after for s in stats), finite(s.share_after for s in stats)
    lines = [f"{counted(len(stats), 'weight')}; median [10th, 90th percentile]:"]
    if kappas:
        lines.append(f"  before SVS: kappa {spread(kappas)}" + (f", top share {spread(shares)}" if shares else
                                                                 " (from svs_refine.json, which has no top share)"))
    if after_k:
        lines.append(f"  {'as refined' if refined else 'after SVS'} ({map}): kappa {spread(after_k)}, top share {spread(after_s)}")
    if not kappas:
        return lines
    median, large = quantiles(kappas)[0], sum(k >= PAPER_KAPPA for k in kappas)
    if median >= PAPER_KAPPA:
        verdict = f"looks like the case SVS targets: median kappa {median:.3g} >= 100"
    elif large:
        verdict = f"partly like the case SVS targets: {large} of {len(kappas)} weights have kappa >= 100, the median is {median:.3g}"
    else:
        verdict = f"unlike the case SVS targets: no weight has kappa >= 100, the median is {median:.3g}"
    return lines + [
        f"verdict: {verdict} (the paper: a few dominant singular values, about 100x the smallest).",
        f"  On the bundled digits DDPM pruned 50 % (median kappa {DIGITS['kappa']}, top share {DIGITS['share']}) SVS did "
        "not beat plain fine-tuning (docs/results/svs_experiment/results.md): compare against it before adopting SVS."]


def table(stats: Sequence[WeightStats], refined: bool) -> List[str]:
    """One row per weight, columns aligned to the longest cell."""
    def num(x: Optional[float], fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    after = "refined" if refined else "after"
    header = ("parameter", "shape", "rank", "kappa", "top share", f"kappa {after}", f"share {after}")
    rows = [(s.name, "x".join(map(str, s.shape)), str(s.rank), num(s.kappa, ".4g"), num(s.share, ".3f"),
             num(s.kappa_after, ".4g"), num(s.share_after, ".3f")) for s in stats]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header)] + [line(r) for r in rows]


def refine_record(path: Path) -> Optional[dict]:
    """What ``svs refine`` recorded in the directory ``path`` (``svs_refine.json``), or None when
    it did not write ``path``."""
    file = Path(path) / "svs_refine.json"
    return json.loads(file.read_text()) if Path(path).is_dir() and file.is_file() else None


def measure(plan: Sequence[Tuple[Source, list]], map: str, record: Optional[dict] = None,
            on_weight: Callable[[], None] = lambda: None) -> Tuple[List[WeightStats], List[torch.Tensor], List[torch.Tensor]]:
    """Each planned weight's stats, and the spectra before and after SVS (``map`` applied; for a
    refined directory, ``record``, "after" is the weight as stored and "before" has no spectra:
    its kappa comes from the record)."""
    from .ops import map_spectrum

    recorded = {} if record is None else {r["name"]: (r["before_max"], r["before_min"])
                                          for r in record["report"]["records"] if r["role"] == "weight"}
    stats, before, after = [], [], []
    for source, weights in plan:
        shapes = {n: shape for n, shape, _ in weights}
        for name, s in spectra(source, weights):
            full, rank = source.prefix + name, int((s > 0).sum())
            if record is not None:
                s_max, s_min = recorded.get(full, (None, None))
                stats.append(WeightStats(full, shapes[name], rank, s_max / s_min if s_min else None, None, *kappa_share(s)))
            else:
                before.append(s)
                s = map_spectrum(s, map)
                stats.append(WeightStats(full, shapes[name], rank, *kappa_share(before[-1]), *kappa_share(s)))
            after.append(s)
            on_weight()
    return stats, before, after
