"""Which parameters SVS touches: the authors' layer rules as named presets.

A preset maps a parameter name and tensor to a :class:`Role`, or says why it leaves the tensor
alone. Rules look at names and shapes only, so they apply alike to a module and to a bare state
dict; how a layer stores its weight (``(in, out)``, fused experts) is :mod:`svs.layouts`' business,
which gives the rules each matrix under a name of its own first.
"""
from __future__ import annotations

import enum
import re
from typing import Callable, Dict, Optional, Tuple, Union

import torch


class Role(enum.Enum):
    WEIGHT = "weight"      # U f(S) V^T
    BIAS = "bias"          # b / sqrt(||b|| + eps), when its weight is refined too
    RESET_ONE = "reset=1"  # norm scale reset before fine-tuning (the authors' DDPM code)
    RESET_ZERO = "reset=0"  # norm shift reset
    SKIP = "skip"


# A rule maps a name and tensor to a Role, or to a string: why the preset leaves it alone.
Rule = Callable[[str, torch.Tensor], Union[Role, str]]


def _weight_or_bias(name: str, tensor: torch.Tensor) -> Union[Role, str]:
    leaf = name.rsplit(".", 1)[-1]
    if "weight" in leaf and tensor.ndim >= 2:
        return Role.WEIGHT
    if "bias" in leaf:
        return Role.BIAS
    return "a 1-D weight (not a matrix)" if "weight" in leaf else "not a weight or bias"


def ddpm(name: str, tensor: torch.Tensor) -> Union[Role, str]:
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
        return "a norm parameter that is not a 1-D weight or bias"
    return _weight_or_bias(name, tensor)


def stylegan(name: str, tensor: torch.Tensor) -> Union[Role, str]:
    """The synthesis network only: its convs, modulation affines and ToRGB layers.

    Not the mapping network, the discriminator, ``const`` or ``noise_strength``. Parameters are
    scaled as stored (the equalized-lr ``weight_gain`` is applied at run time and stays as is).
    Given ``G.synthesis`` itself (no ``synthesis``/``mapping`` in any name), all of it counts.
    """
    parts = name.split(".")
    if "synthesis" not in parts:
        return "outside the synthesis network"
    return _weight_or_bias(name, tensor)


def _stylegan_whole_synthesis(name: str, tensor: torch.Tensor) -> Union[Role, str]:
    return _weight_or_bias(name, tensor)


def generic(name: str, tensor: torch.Tensor) -> Union[Role, str]:
    """Every parameter named ``*weight*`` with ndim >= 2, and its bias."""
    return _weight_or_bias(name, tensor)


_IN_BLOCK = re.compile(r"\.\d+\.")  # a block index: model.layers.0., transformer.h.0., encoder.layer.0.
_NORM = re.compile(r"norm|(^|\.)ln_")
_EMBEDDING = re.compile(r"embed|relative_attention_bias|(^|\.)w[tp]e\.")
# A MoE router: a module named gate or router (Mixtral's mlp.gate / block_sparse_moe.gate, GPT-OSS'
# mlp.router) or *_gate (Qwen2-MoE's shared_expert_gate); gate_proj is a projection and counts.
_ROUTER = re.compile(r"(^|\.)(gate|router|\w+_gate)\.[^.]+$")


def transformer(name: str, tensor: torch.Tensor) -> Union[Role, str]:
    """Every 2-D linear weight inside the transformer blocks (attention and MLP projections, MoE
    experts; names with a block index, as ``transformers`` writes them: ``model.layers.0.mlp.up_proj``,
    ``transformer.h.0.attn.c_attn``, ``bert.encoder.layer.0.attention.self.query``) and its bias.
    Not embeddings, the output head, norm layers or MoE routers (whose output picks the experts:
    a ranking, not a pruned projection)."""
    leaf = name.rsplit(".", 1)[-1]
    if _NORM.search(name):
        return "norm layer"
    if _EMBEDDING.search(name):
        return "embedding"
    if not _IN_BLOCK.search(name):
        return "outside the transformer blocks (e.g. the output head)"
    if _ROUTER.search(name):
        return "MoE router"
    if leaf == "weight" and tensor.ndim == 2:
        return Role.WEIGHT
    return Role.BIAS if leaf == "bias" else "not a 2-D weight or its bias"


DEFAULT_PRESET = "generic"  # svs.options.RefineOptions' default too

PRESETS: Dict[str, Rule] = {
    "ddpm": ddpm,
    "stylegan2": stylegan,
    "stylegan3": stylegan,
    "generic": generic,
    "transformer": transformer,
}

# PEFT's adapters (lora_A, lora_B, lora_embedding_A, lora_magnitude_vector, ...): trained
# low-rank updates, not pruned weights; every preset leaves them alone and refines base_layer.
_ADAPTER = re.compile(r"(^|\.)lora_[^.]*\.")


def select(
    named: Dict[str, torch.Tensor],
    preset: str = DEFAULT_PRESET,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
) -> Dict[str, Role]:
    """The role of every name in ``named`` (insertion order kept).

    ``include`` / ``exclude`` are regular expressions searched in the name: a name must match
    ``include`` (when given) and must not match ``exclude`` to be touched. A bias is refined only
    together with the weight of the same layer (``x.bias`` with ``x.weight``): the bias rule keeps
    ``|b| / sigma`` consistent with the scaled weight, so it means nothing on its own. PEFT's
    LoRA adapters (``lora_*``) are left alone by every preset.
    """
    return select_with_reasons(named, preset, include, exclude)[0]


def select_with_reasons(
    named: Dict[str, torch.Tensor],
    preset: str = DEFAULT_PRESET,
    include: Optional[str] = None,
    exclude: Optional[str] = None,
) -> Tuple[Dict[str, Role], Dict[str, str]]:
    """:func:`select`, and why each name it leaves alone (role ``SKIP``) is left alone."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    rule = PRESETS[preset]
    if rule is stylegan and not any({"synthesis", "mapping"} & set(n.split(".")) for n in named):
        rule = _stylegan_whole_synthesis
    inc, exc = _regex(include, "include"), _regex(exclude, "exclude")

    roles: Dict[str, Role] = {}
    why: Dict[str, str] = {}
    for name, tensor in named.items():
        role = "LoRA adapter" if _ADAPTER.search(name) else rule(name, tensor)
        if isinstance(role, Role) and inc and not inc.search(name):
            role = "not matched by include"
        elif isinstance(role, Role) and exc and exc.search(name):
            role = "matched by exclude"
        if isinstance(role, str):
            why[name], role = role, Role.SKIP
        roles[name] = role
    for name, role in roles.items():
        if role is Role.BIAS and roles.get(paired_weight(name)) is not Role.WEIGHT:
            roles[name], why[name] = Role.SKIP, "its weight is not refined"
    return roles, why


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
