"""Fake (meta) kernels of the svs operators: output shapes and dtypes without computing anything."""
from typing import List, Optional, Tuple

import torch


@torch.library.register_fake("svs::refine")
def _refine_fake(
    weights: List[torch.Tensor],
    biases: List[Optional[torch.Tensor]],
    map: str = "sqrt",
    eps: float = 1e-8,
    method: str = "auto",
    certify: bool = True,
) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
    torch._check(len(weights) > 0, lambda: "svs.refine: the weights list is empty")
    torch._check(len(biases) == len(weights), lambda: "svs.refine: one bias (or None) per weight")
    new_weights = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
    new_biases = [None if b is None else torch.empty_like(b, memory_format=torch.contiguous_format) for b in biases]
    return new_weights, new_biases


@torch.library.register_fake("svs::refine_")
def _refine_inplace_fake(weights, biases, map="sqrt", eps=1e-8, method="auto", certify=True) -> None:
    return None


@torch.library.register_fake("svs::_reconstruct")
def _reconstruct_fake(u, s, vh, out, map=0, power=1.0) -> None:
    return None


@torch.library.register_fake("svs::refine_with_spectra")
def _refine_with_spectra_fake(weights, biases, map="sqrt", eps=1e-8, method="auto", certify=True):
    new_weights, new_biases = _refine_fake(weights, biases, map, eps, method, certify)
    spectra = [w.new_empty((min(w.shape[0], w.numel() // max(w.shape[0], 1)),), dtype=torch.float64) for w in weights]
    # On the inputs' device (meta under shape inference), like the real kernel's route codes' shape.
    return new_weights, new_biases, spectra, torch.zeros(len(weights), dtype=torch.int8, device=weights[0].device)


@torch.library.register_fake("svs::_map_spectrum")
def _map_spectrum_fake(s, map="sqrt"):
    return s.new_empty(s.shape, dtype=torch.float64)


@torch.library.register_fake("svs::_certify")
def _certify_fake(weights, outputs, spectra, routes, map="sqrt", reconstruct=0.0):
    return torch.empty((len(weights), 2 * len(torch.ops.svs._certificate_checks())), dtype=torch.float64)
