"""Which parameters SVS touches: the authors' layer rules as named presets.

A preset maps a parameter name and tensor to a :class:`Role`. Rules look at names only, so they
apply alike to a module and to a bare state dict.
"""
from __future__ import annotations

import enum
import re
from typing import Callable, Dict, Iterable, Optional

import torch


class Role(enum.Enum):
    WEIGHT = "weight"      # U f(S) V^T
    BIAS = "bias"          # b / sqrt(||b|| + eps), when its weight is refined too
    RESET_ONE = "reset=1"  # norm scale reset before fine-tuning (the authors' DDPM code)
    RESET_ZERO = "reset=0"  # norm shift reset
    SKIP = "skip"


def _weight_or_bias(name: str, tensor: torch.Tensor) -> Role:
    leaf = name.rsplit(".", 1)[-1]
    if "weight" in leaf and tensor.ndim >= 2:
        return Role.WEIGHT
    if "bias" in leaf:
        return Role.BIAS
    return Role.SKIP


def ddpm(name: str, tensor: torch.Tensor) -> Role:
    """Every non-norm weight (ndim >= 2) and bias; norm layers are reset to weight 1, bias 0.

    The authors reset every GroupNorm; diffusers' DDPM UNets have no other norm layer, and their
    norm parameters are the ones with ``norm`` in the name.
    """
    if "norm" in name:
        leaf = name.rsplit(".", 1)[-1]
        if tensor.ndim == 1 and leaf == "weight":
            return Role.RESET_ONE
        if tensor.ndim == 1 and leaf == "bias":
            return Role.RESET_ZERO
        return Role.SKIP
    return _weight_or_bias(name, tensor)


def stylegan(name: str, tensor: torch.Tensor) -> Role:
    """The synthesis network only: its convs, modulation affines and ToRGB layers.

    Not the mapping network, the discriminator, ``const`` or ``noise_strength``. Parameters are
    scaled as stored (the equalized-lr ``weight_gain`` is applied at run time and stays as is).
    Given ``G.synthesis`` itself (no ``synthesis``/``mapping`` in any name), all of it counts.
    """
    parts = name.split(".")
    if "synthesis" not in parts:
        return Role.SKIP
    return _weight_or_bias(name, tensor)


def _stylegan_whole_synthesis(name: str, tensor: torch.Tensor) -> Role:
    return _weight_or_bias(name, tensor)


def generic(name: str, tensor: torch.Tensor) -> Role:
    """Every parameter named ``*weight*`` with ndim >= 2, and its bias."""
    return _weight_or_bias(name, tensor)


_IN_BLOCK = re.compile(r"\.\d+\.")  # a block index: model.layers.0., transformer.h.0., encoder.layer.0.
_NOT_LINEAR = re.compile(r"norm|embed|relative_attention_bias")


def transformer(name: str, tensor: torch.Tensor) -> Role:
    """Every 2-D linear weight inside the transformer blocks (attention and MLP projections, MoE
    experts; names with a block index, as ``transformers`` writes them: ``model.layers.0.mlp.up_proj``,
    ``transformer.h.0.attn.c_attn``, ``bert.encoder.layer.0.attention.self.query``) and its bias.
    Not embeddings, the output head or norm layers."""
    leaf = name.rsplit(".", 1)[-1]
    if not _IN_BLOCK.search(name) or _NOT_LINEAR.search(name):
        return Role.SKIP
    if leaf == "weight" and tensor.ndim == 2:
        return Role.WEIGHT
    return Role.BIAS if leaf == "bias" else Role.SKIP


PRESETS: Dict[str, Callable[[str, torch.Tensor], Role]] = {
    "ddpm": ddpm,
    "stylegan2": stylegan,
    "stylegan3": stylegan,
    "generic": generic,
    "transformer": transformer,
}


def select(
    named: Dict[str, torch.Tensor],
    preset: str = "generic",
    include: Optional[str] = None,
    exclude: Optional[str] = None,
) -> Dict[str, Role]:
    """The role of every name in ``named`` (insertion order kept).

    ``include`` / ``exclude`` are regular expressions searched in the name: a name must match
    ``include`` (when given) and must not match ``exclude`` to be touched. A bias is refined only
    together with the weight of the same layer (``x.bias`` with ``x.weight``): the bias rule keeps
    ``|b| / sigma`` consistent with the scaled weight, so it means nothing on its own.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    rule = PRESETS[preset]
    if rule is stylegan and not any({"synthesis", "mapping"} & set(n.split(".")) for n in named):
        rule = _stylegan_whole_synthesis
    inc, exc = _regex(include, "include"), _regex(exclude, "exclude")

    roles: Dict[str, Role] = {}
    for name, tensor in named.items():
        role = rule(name, tensor)
        if role is not Role.SKIP and ((inc and not inc.search(name)) or (exc and exc.search(name))):
            role = Role.SKIP
        roles[name] = role
    for name, role in roles.items():
        if role is Role.BIAS and roles.get(paired_weight(name)) is not Role.WEIGHT:
            roles[name] = Role.SKIP
    return roles


def _regex(pattern: Optional[str], what: str) -> Optional["re.Pattern[str]"]:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as err:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression: {err}") from None


def paired_weight(bias_name: str) -> str:
    """``a.b.bias`` -> ``a.b.weight`` (the weight of the same layer)."""
    head, _, leaf = bias_name.rpartition(".")
    leaf = leaf.replace("bias", "weight")
    return f"{head}.{leaf}" if head else leaf


def names_with(roles: Dict[str, Role], wanted: Iterable[Role]) -> list:
    wanted = set(wanted)
    return [name for name, role in roles.items() if role in wanted]
