"""The paper's pipeline on the bundled digits: a teacher DDPM -> structural pruning -> optional SVS
-> fine-tuning -> DDIM sampling, and the evaluator that scores the samples."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..io import CheckpointError, atomic_write, load
from ..model import refine_model
from .data import ASSETS, IMAGE_SIZE, digits
from .metrics import classifier_features, frechet_distance, load_classifier, recognisability, ssim
from .pruning import prune_unet

# A scaled-down CIFAR-style DDPM UNet (same block types and order as google/ddpm-cifar10-32).
TEACHER_CONFIG: Dict[str, Any] = dict(
    sample_size=IMAGE_SIZE,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=8,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    act_fn="silu",
)
TRAIN_TIMESTEPS = 1000


def build_teacher(seed: int = 0) -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**TEACHER_CONFIG)


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear")


@dataclasses.dataclass
class TrainConfig:
    steps: int
    batch_size: int = 128
    lr: float = 2e-4
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500


def train_ddpm(
    model: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig,
    checkpoint: Optional[Path] = None,
    eval_fn: Optional[Callable[[nn.Module, int], Dict[str, float]]] = None,
    eval_every: int = 0,
    progress: bool = True,
) -> Dict[str, Any]:
    """DDPM (epsilon-prediction) training or fine-tuning of ``model`` in place with an EMA copy.

    The EMA and the optimizer are made here, after any SVS, as the authors do. With
    ``checkpoint``, state is saved every ``cfg.checkpoint_every`` steps (atomically) and a run
    resumes from it. Returns the history: loss per ``log_every`` steps and ``eval_fn`` results.
    On return ``model`` holds the EMA weights.
    """
    import copy

    from tqdm.auto import tqdm


    sched = scheduler()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: Dict[str, Any] = {"loss": [], "eval": []}
    step = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load(checkpoint).obj  # weights only: no code from the file
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        history, step = state["history"], state["step"]

    def save() -> None:
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "gen": gen.get_state(), "history": history, "step": step}
        atomic_write(Path(checkpoint), lambda tmp: torch.save(state, tmp))

    if eval_fn is not None and eval_every and step == 0:
        history["eval"].append({"step": 0, **eval_fn(model, 0)})
    with tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not progress) as bar:
        model.train()
        running = 0.0
        while step < cfg.steps:
            idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
            x0 = images[idx]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(TRAIN_TIMESTEPS, (cfg.batch_size,), generator=gen)
            loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)
            step += 1
            running += loss.item()
            if step % cfg.log_every == 0:
                history["loss"].append({"step": step, "loss": running / cfg.log_every})
                bar.set_postfix(loss=f"{running / cfg.log_every:.4f}")
                running = 0.0
            if eval_fn is not None and eval_every and step % eval_every == 0:
                history["eval"].append({"step": step, **eval_fn(ema, step)})
            if checkpoint is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save()
            bar.update(1)
    model.load_state_dict(ema.state_dict())
    model.eval()
    return history


@torch.no_grad()
def sample_ddim(model: nn.Module, n: int, steps: int = 50, seed: int = 0, noise: Optional[torch.Tensor] = None,
                batch_size: int = 500) -> torch.Tensor:
    """``n`` DDIM samples (eta = 0) in [-1, 1]; the same ``seed`` gives the same starting noise,
    so teacher and student samples can be compared image by image (SSIM)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", clip_sample=True)
    sched.set_timesteps(steps)
    cfg = model.config
    if noise is None:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
    model.eval()
    out = []
    for chunk in noise.split(batch_size):
        x = chunk.clone()
        for t in sched.timesteps:
            x = sched.step(model(x, t).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


TEACHER_WEIGHTS = ASSETS / "digits_teacher.safetensors"


def load_teacher() -> nn.Module:
    """The bundled teacher (``scripts/train_teacher.py``), in eval mode."""
    from safetensors.torch import load_file

    if not TEACHER_WEIGHTS.exists():
        raise FileNotFoundError(f"{TEACHER_WEIGHTS} is missing; train it with scripts/train_teacher.py")
    model = build_teacher()
    model.load_state_dict(load_file(str(TEACHER_WEIGHTS)))
    return model.eval()


def load_model(spec: str, trust_pickle: bool = False) -> nn.Module:
    """``teacher`` (the bundled one) or a checkpoint path: a pickled module as such (only with
    ``trust_pickle``, see :func:`svs.io.load`), a state dict or safetensors file with the
    teacher's architecture."""
    if spec == "teacher":
        return load_teacher()
    ckpt = load(spec, trust_pickle=trust_pickle)
    if isinstance(ckpt.obj, nn.Module):
        return ckpt.obj
    model = build_teacher()
    try:
        model.load_state_dict(ckpt.obj)
    except RuntimeError as err:
        raise CheckpointError(
            f"{spec} does not hold the bundled teacher's architecture (a pruned model is a whole pickled "
            f"module, as svs prune writes it): {str(err).splitlines()[0]}"
        ) from err
    return model


def reinitialize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh random weights in the same (pruned) architecture: the random-init control."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    return model


VARIANTS = {
    "pruned": "pruned, fine-tuned as is",
    "reset": "pruned, GroupNorm reset to 1/0 (no SVS)",
    "svs-keepnorm": "pruned + SVS, the teacher's GroupNorm kept",
    "svs": "pruned + SVS + GroupNorm reset (the authors' DDPM code)",
    "random": "pruned architecture, random weights",
}


def reset_norms(model: nn.Module) -> nn.Module:
    """Every norm layer's scale to 1 and shift to 0 (the ``ddpm`` preset's reset, without SVS)."""
    from ..presets import Role, select

    with torch.no_grad():
        for name, role in select(dict(model.named_parameters()), "ddpm").items():
            if role in (Role.RESET_ONE, Role.RESET_ZERO):
                model.get_parameter(name).fill_(1.0 if role is Role.RESET_ONE else 0.0)
    return model


def student(teacher: nn.Module, ratio: float, variant: str, importance: str = "taylor", seed: int = 0,
            images: Optional[torch.Tensor] = None, map: str = "sqrt") -> nn.Module:
    """A pruned copy of ``teacher`` prepared as ``variant`` (one of :data:`VARIANTS`); ``map`` is
    the SVS map of the ``svs`` variants."""
    import copy

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if images is None:
        images = digits()[0]
    model = prune_unet(copy.deepcopy(teacher), ratio, importance, images=images, seed=seed)
    if variant == "svs":
        refine_model(model, preset="ddpm", map=map, stats=False)
    elif variant == "svs-keepnorm":
        refine_model(model, preset="ddpm", exclude="norm", map=map, stats=False)
    elif variant == "reset":
        reset_norms(model)
    elif variant == "random":
        reinitialize(model, seed)
    return model


class Evaluator:
    """Scores a model's DDIM samples from one fixed noise: FID in the bundled classifier's feature
    space (vs all real digits), SSIM to the teacher's samples from the same noise, and the
    classifier's confidence and class entropy. Call it as ``evaluator(model, step)``."""

    def __init__(self, teacher: nn.Module, n: int = 512, ddim_steps: int = 25, seed: int = 1234):
        self.classifier = load_classifier()
        self.real_features = classifier_features(digits()[0], self.classifier)
        self.noise = torch.randn((n, 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))
        self.ddim_steps = ddim_steps
        self.teacher_samples = sample_ddim(teacher, n, steps=ddim_steps, noise=self.noise)

    def __call__(self, model: nn.Module, step: int = 0) -> Dict[str, float]:
        x = sample_ddim(model, len(self.noise), steps=self.ddim_steps, noise=self.noise)
        rec = recognisability(x, self.classifier)
        return {"fid": frechet_distance(classifier_features(x, self.classifier), self.real_features),
                "ssim": ssim(x, self.teacher_samples), "confidence": rec["confidence"],
                "class_entropy": rec["class_entropy"]}
