"""Benchmark workloads: the exact weight shapes of real (pruned) models, filled with random weights
whose spectra look like pruned weights.

A workload is a list of weight shapes (with a bias flag each); `Workload.materialize` draws the
tensors. Only the shapes come from the models; nothing is downloaded.

Weight recipe (`spectrum`, `random_matrices`): each weight, flattened to M = (m, n) with
r = min(m, n), is M = U diag(s) V^T where
  * U (m x r) and V (n x r) are Haar-random orthonormal factors: Q of the QR of a Gaussian matrix,
    columns signed by sign(diag R) (float32, batched per shape);
  * s has kappa = s_max / s_min = 100 exactly and a few dominant values, as pruned weights have:
    s_0..s_2 = 1.0, 0.6, 0.4 (fewer when r <= 3), the rest log-linear from 0.2 down to 0.01,
    the last one always 0.01 (so kappa = 100 for every r >= 2; r = 1 gives s = [1]).
  * biases (where the layer has one): N(0, 0.1^2).
  * low-precision variants (dtype bfloat16 or float16, name suffix '-bf16' / '-fp16'): the same
    float32 weights and biases, drawn from the float32 twin's seed, rounded to the dtype (round to
    nearest even); the rounded tensors are the input, and the float64 reference is computed from
    their exact values.
Cost: QR of m x r and n x r plus one (m x r)(r x n) product, i.e. about 4(m+n)r^2 + 2mnr flops
per matrix, a fraction of one float32 SVD of the same matrix, in BLAS-3 (fast on CPU and GPU).
Independent rotated copies for timing (`rotated_copy`) are exact orthogonal transforms of copy 0
(random row/column permutations and signs), so they cost O(mn) and keep the spectrum bit-for-bit.
Generated float32 matrices have singular values equal to s to about 1e-6 * s_max.

Workloads (`WORKLOADS`, `get_workload(name)`); the DDPM and SD 1.5 shapes are read from
benchmarks/shapes/ (written from the real models by benchmarks/model_shapes.py), so no workload
needs diffusers or torch-pruning:
  ddpm-cifar10-p30/p50/p70  svs.experiments.pruning.pruned_ddpm_cifar10(ratio): named_parameters with
                            'weight' in the name, ndim >= 2, no 'norm'; plus their biases.
  stylegan2-base / -small   the StyleGAN2 synthesis network at 256x256 (stylegan2-ada-pytorch /
                            official config-f layout, skip architecture), 70 % channel sparsity.
  sd15-unet                 diffusers UNet2DConditionModel() default config (built on 'meta').
  llm-8b-p                  a width-pruned 8B transformer: 32 x (q, k, v, o, gate, up, down).
  llm-8b-p-block            one block of llm-8b-p: its 7 full matrices.
  tiny-batch                100,000 matrices, m and n uniform in 1..32 (seed 0), no biases.
  llm-8b-p-block-bf16, sd15-unet-bf16   the bfloat16 variants (see `low_precision`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from svs.planner import OVERHEAD

from . import model_shapes

Shape = Tuple[int, ...]

# --------------------------------------------------------------------------------------------
# Spectrum and random weights
# --------------------------------------------------------------------------------------------
DOMINANT = (1.0, 0.6, 0.4)  # the few dominant singular values
BULK_TOP, BULK_BOTTOM = 0.2, 0.01  # log-linear bulk; kappa = DOMINANT[0] / BULK_BOTTOM = 100
BIAS_STD = 0.1
KAPPA = DOMINANT[0] / BULK_BOTTOM

_GEN_CHUNK_BYTES = 256 << 20  # float32 working set of one batched generation call


def spectrum(r: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The singular values (descending) of a generated m x n weight, r = min(m, n)."""
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    if r == 1:
        return torch.ones(1, dtype=dtype)
    t = torch.arange(r, dtype=torch.float64) / (r - 1)
    s = BULK_TOP * (BULK_BOTTOM / BULK_TOP) ** t
    k = min(len(DOMINANT), r - 1)
    s[:k] = torch.tensor(DOMINANT[:k], dtype=torch.float64)
    return s.to(dtype)


def _haar(batch: int, n: int, r: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """batch Haar-random n x r matrices with orthonormal columns (float32)."""
    g = torch.randn(batch, n, r, generator=gen, device=device, dtype=torch.float32)
    q, rr = torch.linalg.qr(g)
    d = torch.diagonal(rr, dim1=-2, dim2=-1)
    return q * torch.where(d < 0, -1.0, 1.0).unsqueeze(-2)


def random_matrices(count: int, m: int, n: int, gen: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """count x m x n float32 matrices U diag(spectrum(r)) V^T (see the module docstring)."""
    r = min(m, n)
    s = spectrum(r, torch.float32).to(device)
    per_matrix = 4 * (m * r + n * r + m * n) * 2  # randn + Q for both factors, and the product
    chunk = max(1, _GEN_CHUNK_BYTES // per_matrix)
    out = []
    for start in range(0, count, chunk):
        c = min(chunk, count - start)
        u = _haar(c, m, r, gen, device)
        v = _haar(c, n, r, gen, device)
        out.append(torch.matmul(u * s, v.mT))
    return torch.cat(out) if len(out) > 1 else out[0]


def _seed_of(*parts) -> int:
    import zlib

    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    names: Tuple[str, ...]  # parameter name per weight
    shapes: Tuple[Shape, ...]  # weight shape per weight (before flattening)
    has_bias: Tuple[bool, ...]
    quick: int  # matrices in the --quick subsample
    full_count: Optional[int] = None  # set on subsamples: matrices in the full workload
    seed: int = 0
    dtype: torch.dtype = torch.float32  # of the weights and biases handed to the peers
    seed_name: Optional[str] = None  # draws the weights of this workload (a variant: its float32 twin)
    # (min speedup of 'svs.refine auto' over the baseline, max ratio of its error to the baseline's)
    goal: Optional[Tuple[float, float]] = None

    @property
    def low_precision(self) -> bool:
        """bfloat16 or float16 weights: the error is the point of these rows, so `benchmarks.run`
        times every peer whatever its estimate, computes the error over every matrix (memory
        permitting) and never subsamples them for --quick."""
        return self.dtype in (torch.bfloat16, torch.float16)

    def variant(self, dtype: torch.dtype, goal: Optional[Tuple[float, float]] = None) -> "Workload":
        """This workload's weights rounded to `dtype`, named '<name>-bf16' (or -fp16)."""
        suffix = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        return dataclasses.replace(
            self, name=f"{self.name}-{suffix}", description=f"{self.description}; rounded to {suffix}",
            dtype=dtype, seed_name=self.seed_name or self.name, quick=len(self), goal=goal)

    # ---- sizes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def dims(self) -> List[Tuple[int, int]]:
        """(m, n) of every weight flattened to (shape[0], -1)."""
        return [(s[0], math.prod(s) // s[0]) for s in self.shapes]

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def bias_params(self) -> int:
        return sum(s[0] for s, b in zip(self.shapes, self.has_bias) if b)

    @property
    def n_shapes(self) -> int:
        return len(set(self.dims))

    @property
    def is_subsample(self) -> bool:
        return self.full_count is not None and self.full_count != len(self)

    @property
    def label(self) -> str:
        if self.is_subsample:
            return f"{self.name} [subsample {len(self)}/{self.full_count}]"
        return self.name

    def costs(self, overhead: float = OVERHEAD) -> List[float]:
        """A per-matrix cost model for time estimates: m*n*min(m, n) plus a per-call overhead
        (svs.planner's, which splits work over ranks by the same model)."""
        return [m * n * min(m, n) + overhead for m, n in self.dims]

    def nbytes(self) -> int:
        return (self.params + self.bias_params) * self.dtype.itemsize

    def summary(self) -> Dict:
        dims = self.dims
        largest = max(dims, key=lambda d: d[0] * d[1])
        return dict(
            name=self.name, label=self.label, matrices=len(self), full_matrices=self.full_count or len(self),
            shapes=self.n_shapes, params=self.params, bias_params=self.bias_params,
            largest=f"{largest[0]}x{largest[1]}", description=self.description,
            dtype=str(self.dtype).replace("torch.", ""), goal=self.goal,
        )

    # ---- subsamples ------------------------------------------------------------------------
    def subset(self, indices: Sequence[int]) -> "Workload":
        idx = list(indices)
        return dataclasses.replace(
            self,
            names=tuple(self.names[i] for i in idx),
            shapes=tuple(self.shapes[i] for i in idx),
            has_bias=tuple(self.has_bias[i] for i in idx),
            full_count=self.full_count or len(self),
        )

    def subsample(self, k: Optional[int]) -> "Workload":
        """k matrices at evenly spaced positions (keeps the mix of shapes); k >= len: self."""
        if k is None or k >= len(self):
            return self
        return self.subset(stride_indices(len(self), k))

    # ---- tensors ---------------------------------------------------------------------------
    def materialize(self, device="cpu", seed: Optional[int] = None
                    ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
        """Weights (each its own allocation, in its original shape) and biases in self.dtype:
        drawn in float32, then rounded."""
        device = torch.device(device)
        seed = self.seed if seed is None else seed
        name = self.seed_name or self.name
        weights: List[Optional[torch.Tensor]] = [None] * len(self)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, d in enumerate(self.dims):
            groups.setdefault(d, []).append(i)
        for (m, n), idx in groups.items():
            gen = torch.Generator(device=device).manual_seed(_seed_of(seed, name, m, n, len(idx)))
            mats = random_matrices(len(idx), m, n, gen, device)
            for j, i in enumerate(idx):
                weights[i] = mats[j].reshape(self.shapes[i]).to(self.dtype, copy=True)
            del mats
        gen = torch.Generator(device=device).manual_seed(_seed_of(seed, name, "bias"))
        biases = [
            (torch.randn(s[0], generator=gen, device=device) * BIAS_STD).to(self.dtype) if b else None
            for s, b in zip(self.shapes, self.has_bias)
        ]
        return weights, biases  # type: ignore[return-value]


def stride_indices(n: int, k: int) -> List[int]:
    """k distinct indices spread evenly over range(n) (first and last included when k >= 2)."""
    k = max(1, min(k, n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def group_by_shape(weights: Sequence[torch.Tensor]) -> Dict[Tuple[int, int], List[int]]:
    """Indices of the weights per (m, n) of their (shape[0], -1) flattening, in first-seen order."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault((w.shape[0], w.numel() // w.shape[0]), []).append(i)
    return groups


def rotated_copy(weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]], seed: int
                 ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
    """An independent copy for input rotation: P1 D1 M D2 P2 per matrix (random permutations P,
    random signs D), the same permutation for all matrices of one shape. Exact in any dtype (the
    signs are applied in the weight's own dtype), so every copy has exactly the spectrum of the
    original, and its SVS result is the same transform of the original's."""
    out_w: List[Optional[torch.Tensor]] = [None] * len(weights)
    out_b: List[Optional[torch.Tensor]] = [None] * len(weights)
    for (m, n), idx in group_by_shape(weights).items():
        dev = weights[idx[0]].device
        gen = torch.Generator(device="cpu").manual_seed(_seed_of(seed, m, n))
        p = torch.randperm(m, generator=gen).to(dev)
        q = torch.randperm(n, generator=gen).to(dev)
        d1 = (torch.randint(0, 2, (m, 1), generator=gen) * 2 - 1).to(dev)
        d2 = (torch.randint(0, 2, (1, n), generator=gen) * 2 - 1).to(dev)
        for i in idx:
            w = weights[i]
            flipped = (w.reshape(m, n)[p][:, q] * d1.to(w.dtype)) * d2.to(w.dtype)
            out_w[i] = flipped.reshape(w.shape).contiguous()
            b = biases[i]
            out_b[i] = None if b is None else b[p].contiguous()
    return out_w, out_b  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Shapes of the models
# --------------------------------------------------------------------------------------------
def _select(named_shapes: Sequence[Tuple[str, Shape]]) -> Tuple[List[str], List[Shape], List[bool]]:
    """The authors' selection: 'weight' in the name, ndim >= 2, no 'norm'; bias = '<module>.bias'."""
    table = dict(named_shapes)
    names, shapes, bias = [], [], []
    for name, shape in named_shapes:
        if "weight" in name and len(shape) >= 2 and "norm" not in name:
            names.append(name)
            shapes.append(tuple(shape))
            b = name.rsplit("weight", 1)[0] + "bias"
            bias.append(b in table and tuple(table[b]) == (shape[0],))
    return names, shapes, bias


def dist_version(dist: str) -> Optional[str]:
    """The installed version of a distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


STYLEGAN2_CONFIGS = {
    # stylegan2-ada-pytorch cfg 'stylegan2' (config-f, fmaps=1): 30.0M G params at 256x256,
    # the 'base' teacher of the SVS paper, Table 1.
    "base": dict(channel_base=32768, channel_max=512),
    # stylegan2-ada-pytorch cfg 'paper256' (fmaps=0.5): 24.8M G params, the paper's 'small'
    # ("the optimized architecture provided by the official implementation", Table 1: 24.7M).
    "small": dict(channel_base=16384, channel_max=512),
}
STYLEGAN2_KEEP = 0.3  # 70 % channel sparsity: keep ceil(0.3 * c) channels of every feature map


def stylegan2_named_shapes(channel_base: int, channel_max: int, keep: float = STYLEGAN2_KEEP,
                           resolution: int = 256, w_dim: int = 512, img_channels: int = 3
                           ) -> List[Tuple[str, Shape]]:
    """Parameters of the StyleGAN2 synthesis network (stylegan2-ada-pytorch names and layout).

    Feature channels at resolution res: c(res) = ceil(keep * min(channel_base // res, channel_max)).
    The w_dim inputs of the affines and the RGB outputs are not pruned. Per block: conv0 (3x3,
    upsampling, absent at 4x4), conv1 (3x3), torgb (1x1); each layer has an `affine`
    (FullyConnectedLayer w_dim -> in_channels, weight (in, w_dim), bias), a weight and a bias.
    Not listed (not scaled by SVS): const, noise_strength, the mapping network.
    """
    def ch(res):
        return math.ceil(keep * min(channel_base // res, channel_max))

    out: List[Tuple[str, Shape]] = []

    def layer(prefix, cin, cout, k):
        out.append((f"{prefix}.affine.weight", (cin, w_dim)))
        out.append((f"{prefix}.affine.bias", (cin,)))
        out.append((f"{prefix}.weight", (cout, cin, k, k)))
        out.append((f"{prefix}.bias", (cout,)))

    res = 4
    while res <= resolution:
        b = f"synthesis.b{res}"
        if res == 4:
            out.append((f"{b}.const", (ch(4), 4, 4)))
        else:
            layer(f"{b}.conv0", ch(res // 2), ch(res), 3)
        layer(f"{b}.conv1", ch(res), ch(res), 3)
        layer(f"{b}.torgb", ch(res), img_channels, 1)
        res *= 2
    return out


LLM_BLOCKS = 32
LLM_PROJ = (  # (name, out, in): nn.Linear weights, no biases
    ("self_attn.q_proj", 3072, 3072), ("self_attn.k_proj", 1024, 3072), ("self_attn.v_proj", 1024, 3072),
    ("self_attn.o_proj", 3072, 3072), ("mlp.gate_proj", 9216, 3072), ("mlp.up_proj", 9216, 3072),
    ("mlp.down_proj", 3072, 9216),
)

TINY_COUNT = 100_000
TINY_MAX = 32


def _from_named(name, description, named, quick) -> Workload:
    names, shapes, bias = _select(named)
    return Workload(name, description, tuple(names), tuple(shapes), tuple(bias), quick)


def _ddpm(ratio: float) -> Workload:
    name = f"ddpm-cifar10-p{round(ratio * 100)}"
    return _from_named(
        name, f"CIFAR-10 DDPM UNet (google/ddpm-cifar10-32 config), Torch-Pruning magnitude "
              f"{round(ratio * 100)} %, conv_out kept", model_shapes.load(name), quick=24)


def _stylegan2(size: str) -> Workload:
    cfg = STYLEGAN2_CONFIGS[size]
    return _from_named(
        f"stylegan2-{size}",
        f"StyleGAN2 synthesis 256x256 (channel_base={cfg['channel_base']}, channel_max={cfg['channel_max']}), "
        f"70 % channel sparsity (keep ceil(0.3 c)): affines, 3x3 convs, ToRGB",
        stylegan2_named_shapes(**cfg), quick=16)


def _sd15() -> Workload:
    return _from_named("sd15-unet", "diffusers UNet2DConditionModel() default config (SD 1.5 UNet)",
                       model_shapes.load("sd15-unet"), quick=8)


def _llm(blocks: int = LLM_BLOCKS) -> Workload:
    names, shapes = [], []
    for i in range(blocks):
        for proj, o, n in LLM_PROJ:
            names.append(f"model.layers.{i}.{proj}.weight")
            shapes.append((o, n))
    if blocks == LLM_BLOCKS:
        name, what, quick = "llm-8b-p", f"{blocks} x ", 2
    else:  # one block: never subsampled (full matrices, no extrapolation)
        name, what, quick = "llm-8b-p-block", "one block of ", len(shapes)
    return Workload(name, f"width-pruned 8B transformer: {what}q,o 3072x3072; k,v 1024x3072; "
                    "gate,up 9216x3072; down 3072x9216; no biases",
                    tuple(names), tuple(shapes), (False,) * len(shapes), quick=quick)


# Issue 24's goal on the bf16 block: svs.refine auto >= 2x per-layer float32 SVD, error <= 1.05x its.
LLM_BLOCK_BF16_GOAL = (2.0, 1.05)


def _tiny(count: int = TINY_COUNT) -> Workload:
    gen = torch.Generator().manual_seed(0)
    dims = torch.randint(1, TINY_MAX + 1, (count, 2), generator=gen).tolist()
    return Workload("tiny-batch", f"{count} matrices, m and n uniform in 1..{TINY_MAX} (seed 0), no biases",
                    tuple(f"tiny.{i}" for i in range(count)), tuple((m, n) for m, n in dims),
                    (False,) * count, quick=2000)


WORKLOADS: Dict[str, Callable[[], Workload]] = {
    "ddpm-cifar10-p30": lambda: _ddpm(0.3),
    "ddpm-cifar10-p50": lambda: _ddpm(0.5),
    "ddpm-cifar10-p70": lambda: _ddpm(0.7),
    "stylegan2-base": lambda: _stylegan2("base"),
    "stylegan2-small": lambda: _stylegan2("small"),
    "sd15-unet": _sd15,
    "llm-8b-p": _llm,
    "tiny-batch": _tiny,
    "llm-8b-p-block": lambda: _llm(blocks=1),
    "llm-8b-p-block-bf16": lambda: _llm(blocks=1).variant(torch.bfloat16, goal=LLM_BLOCK_BF16_GOAL),
    "sd15-unet-bf16": lambda: _sd15().variant(torch.bfloat16),
}


@functools.lru_cache(maxsize=None)
def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]()
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; expected one of {', '.join(WORKLOADS)}") from None


if __name__ == "__main__":  # python -m benchmarks.workloads: list the workloads
    for key in WORKLOADS:
        w = get_workload(key)
        s = w.summary()
        print(f"{key:20s} {s['dtype']:8s} {s['matrices']:7d} matrices {s['shapes']:5d} shapes {s['params'] / 1e6:9.2f}M params "
              f"(+{s['bias_params'] / 1e3:.1f}k bias) largest {s['largest']:>11s}  {w.description}")
