"""What a refinement did, parameter by parameter, as a table a person can read and JSON; built
once per refinement (:func:`build`), from the plan and the records of every batch."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .spectrum import group_by_shape

if TYPE_CHECKING:
    from .options import RefineOptions
    from .planner import Plan


@dataclasses.dataclass
class ParamRecord:
    """One parameter: for weights the extreme singular values before and after (after = None when
    not refined or not measured); for biases the L2 norm; for a skipped one (role ``skipped``)
    the reason."""

    name: str
    shape: Tuple[int, ...]
    role: str
    route: str
    before_max: Optional[float] = None
    before_min: Optional[float] = None
    after_max: Optional[float] = None
    after_min: Optional[float] = None
    reason: Optional[str] = None


@dataclasses.dataclass
class RefineReport:
    """Result of :func:`svs.refine_model` / :func:`svs.refine_state_dict`."""

    records: List[ParamRecord]
    map: str
    method: str
    device: str
    dry_run: bool
    seconds: float = 0.0
    left_alone: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # reason -> names the preset left alone

    @property
    def weights(self) -> List[ParamRecord]:
        return [r for r in self.records if r.role == "weight"]

    @property
    def skipped(self) -> List[ParamRecord]:
        return [r for r in self.records if r.role == "skipped"]

    @property
    def biases(self) -> List[ParamRecord]:
        return [r for r in self.records if r.role == "bias"]

    def totals(self) -> Dict[str, Any]:
        def numel(records):
            total = 0
            for r in records:
                n = 1
                for d in r.shape:
                    n *= d
                total += n
            return total

        return {
            "weights": len(self.weights),
            "biases": len(self.biases),
            "resets": sum(r.role.startswith("reset") for r in self.records),
            "skipped": len(self.skipped),
            "shapes": len(group_by_shape([r.shape for r in self.weights])),
            "params_refined": numel(self.weights) + numel(self.biases),
            "seconds": round(self.seconds, 4),
        }

    def to_dict(self) -> Dict[str, Any]:
        return {
            "map": self.map,
            "method": self.method,
            "device": self.device,
            "dry_run": self.dry_run,
            "totals": self.totals(),
            "records": [dataclasses.asdict(r) for r in self.records],
            "left_alone": self.left_alone,
        }

    def summary(self) -> str:
        """The one line under the table: what was (or would be) refined, and how long it took."""
        t = self.totals()
        verb = "would refine" if self.dry_run else "refined"
        return (
            f"SVS map={self.map} method={self.method} device={self.device}: {verb} {counted(t['weights'], 'weight')} "
            f"({counted(t['shapes'], 'shape')}) and {counted(t['biases'], 'bias', 'biases')}, "
            f"{counted(t['params_refined'], 'parameter')}; {counted(t['resets'], 'norm parameter')} reset; {t['seconds']:.3f} s"
        ) + (f"; skipped {t['skipped']} (reason in the route column)" if t["skipped"] else "")

    def __str__(self) -> str:
        def num(x: Optional[float]) -> str:
            return "-" if x is None else f"{x:.4g}"

        header = ("parameter", "shape", "role", "route", "s_max", "s_min", "s_max'", "s_min'")
        rows = [
            (r.name, "x".join(map(str, r.shape)), r.role, r.reason or r.route, num(r.before_max),
             num(r.before_min), num(r.after_max), num(r.after_min))
            for r in self.records
        ]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        note = "(for biases s_max/s_min' columns show ||b|| before/after)"
        summary = self.summary()
        fallback = sum(r.route.startswith("fallback:") for r in self.weights)
        if fallback:  # the CUDA kernel's result failed its certificate (README: The certificate)
            note += (f"\n{counted(fallback, 'weight')} on route fallback:*: the GPU result failed its certificate and was "
                     "recomputed on the exact aten route; please report it")
        left = [f"left alone: {len(names)} {reason} ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
                for reason, names in self.left_alone.items()]
        return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows] + [summary, note] + left)


def counted(n: int, one: str, many: str = "") -> str:
    """``n`` and the noun, singular for 1: ``1 weight``, ``2 weights``, ``1,024 parameters``."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def build(plan: "Plan", records: Dict[str, ParamRecord], options: "RefineOptions", device: str,
          seconds: float) -> RefineReport:
    """The report of a refinement, once, from its plan and the records of every batch: in the
    source's order, the skipped tensors with their reason, and why the preset left the others alone."""
    out = []
    for name in plan.order:
        if name in plan.skipped:
            out.append(ParamRecord(name, plan.shapes[name], "skipped", "-", reason=plan.skipped[name]))
        elif name in records:
            out.append(records[name])
    return RefineReport(out, map=options.map, method=options.method, device=device, dry_run=options.dry_run,
                        seconds=seconds, left_alone=by_reason(plan.left_alone))


def by_reason(why: Dict[str, str]) -> Dict[str, List[str]]:
    """``{name: reason}`` as ``{reason: [names]}``."""
    out: Dict[str, List[str]] = {}
    for name, reason in why.items():
        out.setdefault(reason, []).append(name)
    return out


def progress_bar(total: int, enabled: bool):
    """A progress bar over ``total`` matrices (hidden unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="SVS", unit="matrix", disable=not enabled)
