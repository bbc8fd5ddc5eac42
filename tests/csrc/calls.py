"""The operators called directly, as the svs wrappers call them but without their argument checks
(tests/svs/test_ops.py tests those): biases default to none, route codes come back as names. The
operator tests use these, so they test the extension alone (tests import their layer and below)."""
import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs.*)


def _biases(weights, biases):
    return [None] * len(weights) if biases is None else biases


def refine(weights, biases=None, **options):
    """torch.ops.svs.refine: (new_weights, new_biases)."""
    return torch.ops.svs.refine(weights, _biases(weights, biases), **options)


def refine_(weights, biases=None, **options):
    """torch.ops.svs.refine_, in place."""
    torch.ops.svs.refine_(weights, _biases(weights, biases), **options)


def refine_with_spectra(weights, biases=None, **options):
    """torch.ops.svs.refine_with_spectra, with the route of each weight by name."""
    new_w, new_b, spectra, codes = torch.ops.svs.refine_with_spectra(weights, _biases(weights, biases), **options)
    names = list(torch.ops.svs._route_names())
    return new_w, new_b, spectra, [names[c] for c in codes.tolist()]


def float32_switch(make, lo=1.0, hi=1e4, steps=20):
    """(below, above): condition numbers bracketing where the CPU kernel stops keeping its float32
    result (route aten:gram32, csrc/precision.h) for the weight make(kappa): bisection on log kappa,
    `steps` halvings."""
    def kept(kappa):
        return refine_with_spectra([make(kappa)])[3] == ["aten:gram32"]

    assert kept(lo) and not kept(hi)
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if kept(mid) else (lo, mid)
    return lo, hi
