"""Structured pruning of diffusers UNets with Torch-Pruning, as Diff-Pruning does it.

Needs ``diffusers`` and ``torch-pruning``, of the ``experiments`` extra (``pip install svs-kernels[experiments]``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

# google/ddpm-cifar10-32 (the checkpoint Diff-Pruning prunes), written out so it builds offline.
DDPM_CIFAR10_CONFIG: Dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    act_fn="silu",
    mid_block_scale_factor=1,
    center_input_sample=False,
)


def build_ddpm_cifar10(seed: int = 0) -> nn.Module:
    """The CIFAR-10 DDPM UNet (35.7M parameters) with random weights, built offline."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**DDPM_CIFAR10_CONFIG).eval()


def prune_unet(
    unet: nn.Module,
    pruning_ratio: float,
    importance: str = "magnitude",
    images: Optional[torch.Tensor] = None,
    taylor_batches: int = 4,
    seed: int = 0,
) -> nn.Module:
    """Prunes a diffusers ``UNet2DModel`` in place, channel-wise, keeping ``conv_out`` whole.

    ``importance``: ``"magnitude"`` (L2 norm of the channel's weights) or ``"taylor"``
    (Diff-Pruning's first-order Taylor score |w * dL/dw|, with the gradient of the DDPM loss
    accumulated over ``taylor_batches`` batches of ``images``). The module attributes diffusers
    checks at run time (``channels`` of up/down-samplers) are updated so the pruned model runs.
    """
    import torch_pruning as tp

    if importance not in ("magnitude", "taylor"):
        raise ValueError(f"unknown importance {importance!r}; expected 'magnitude' or 'taylor'")
    if not 0.0 <= pruning_ratio < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
    if importance == "taylor" and images is None:
        raise ValueError("taylor importance needs images to compute the DDPM loss gradient")
    size = unet.config.sample_size
    example = {
        "sample": torch.randn(1, unet.config.in_channels, size, size),
        "timestep": torch.ones((1,), dtype=torch.long),
    }
    scorer = tp.importance.MagnitudeImportance(p=2) if importance == "magnitude" else tp.importance.TaylorImportance()
    pruner = tp.pruner.BasePruner(unet, example, importance=scorer, pruning_ratio=pruning_ratio,
                                  ignored_layers=[unet.conv_out])
    if importance == "taylor":
        _accumulate_ddpm_gradient(unet, images, taylor_batches, seed)
    pruner.step()
    unet.zero_grad(set_to_none=True)
    sync_channel_attributes(unet)
    return unet


def _accumulate_ddpm_gradient(unet: nn.Module, images: torch.Tensor, batches: int, seed: int) -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    gen = torch.Generator().manual_seed(seed)
    unet.zero_grad(set_to_none=True)
    for _ in range(batches):
        x0 = images[torch.randint(len(images), (64,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(1000, (len(x0),), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()


def sync_channel_attributes(unet: nn.Module) -> nn.Module:
    """Makes a diffusers UNet that Torch-Pruning pruned runnable again, in place, and returns it.

    Torch-Pruning shrinks the convs' weights and ``in_channels``/``out_channels``, but not the
    ``channels`` / ``out_channels`` attributes that diffusers' ``Downsample2D`` and ``Upsample2D``
    check in ``forward`` (an ``AssertionError`` on the first call otherwise). The recipe, as
    Diff-Pruning does it::

        pruner = tp.pruner.BasePruner(unet, example_inputs, importance=..., pruning_ratio=0.5,
                                      ignored_layers=[unet.conv_out])
        pruner.step()
        sync_channel_attributes(unet)
        svs.refine_model(unet, preset="ddpm")
        torch.save(unet, "pruned_svs.pt")  # the whole module: its config still has the old widths

    (:func:`prune_unet` does the first three steps.)
    """
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for module in unet.modules():
        if isinstance(module, (Downsample2D, Upsample2D)) and getattr(module, "conv", None) is not None:
            module.channels = module.conv.in_channels
            module.out_channels = module.conv.out_channels
    return unet


def pruned_ddpm_cifar10(pruning_ratio: float = 0.5, seed: int = 0) -> nn.Module:
    """The CIFAR-10 DDPM UNet with random weights, pruned by ``pruning_ratio`` (magnitude)."""
    return prune_unet(build_ddpm_cifar10(seed), pruning_ratio)
