"""The parameter shapes of the models behind the benchmark workloads, kept as data.

The pruned CIFAR-10 DDPMs and the SD 1.5 UNet come from diffusers and torch-pruning, which the GPU
machine does not have; their shapes are therefore committed in ``benchmarks/shapes/<workload>.json``
(every named parameter with its shape, and the library versions that produced it), and the
workloads read them from there. This script writes them from the real models:

    python -m benchmarks.model_shapes --write            # every model (needs diffusers, torch-pruning)
    python -m benchmarks.model_shapes --check            # rebuild and compare, exit 1 on a difference

tests/benchmarks/test_model_shapes.py does the --check wherever both libraries are installed, so
the data cannot drift from the models.
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
NamedShapes = List[Tuple[str, Tuple[int, ...]]]
LIBRARIES = ("torch", "diffusers", "torch-pruning")


def _ddpm(ratio: float) -> Callable[[], NamedShapes]:
    def build() -> NamedShapes:
        from svs.experiments.pruning import pruned_ddpm_cifar10

        return [(n, tuple(p.shape)) for n, p in pruned_ddpm_cifar10(ratio).named_parameters()]

    return build


def _sd15() -> NamedShapes:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel()
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


# workload name -> (how the model is built, its builder)
MODELS: Dict[str, Tuple[str, Callable[[], NamedShapes]]] = {
    "ddpm-cifar10-p30": ("svs.experiments.pruning.pruned_ddpm_cifar10(0.3)", _ddpm(0.3)),
    "ddpm-cifar10-p50": ("svs.experiments.pruning.pruned_ddpm_cifar10(0.5)", _ddpm(0.5)),
    "ddpm-cifar10-p70": ("svs.experiments.pruning.pruned_ddpm_cifar10(0.7)", _ddpm(0.7)),
    "sd15-unet": ("diffusers UNet2DConditionModel() default config, on the meta device", _sd15),
}


def path(name: str) -> Path:
    return SHAPES_DIR / f"{name}.json"


def load(name: str) -> NamedShapes:
    """The committed (parameter name, shape) list of a model."""
    data = json.loads(path(name).read_text())
    return [(n, tuple(s)) for n, s in data["parameters"]]


def build(name: str) -> NamedShapes:
    """The (parameter name, shape) list, built from the real model (needs diffusers, torch-pruning)."""
    return MODELS[name][1]()


def _versions() -> Dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def write(name: str) -> Path:
    named = build(name)
    head = json.dumps({"workload": name, "source": MODELS[name][0], "versions": _versions()})[:-1]
    rows = ",\n".join(json.dumps([n, list(s)]) for n, s in named)  # one parameter per line
    SHAPES_DIR.mkdir(exist_ok=True)
    path(name).write_text(f'{head},\n"parameters": [\n{rows}\n]}}\n')
    return path(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_shapes", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="rebuild the models and write benchmarks/shapes/")
    g.add_argument("--check", action="store_true", help="rebuild the models and compare with benchmarks/shapes/")
    p.add_argument("names", nargs="*", default=list(MODELS), help=f"default: all of {', '.join(MODELS)}")
    args = p.parse_args(argv)
    bad = 0
    for name in args.names:
        if args.write:
            print(f"wrote {write(name)}")
        elif build(name) != load(name):
            print(f"{name}: {path(name)} differs from the model; rerun with --write")
            bad += 1
        else:
            print(f"{name}: up to date")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
