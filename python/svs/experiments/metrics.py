"""Scores for samples of the digits DDPMs (see ``svs.experiments.pipelines``): FID in the feature space of a
small digit classifier, recognisability (confidence and class coverage), and SSIM.

Inception-v3 FID does not fit here: its weights are not reachable offline, and it expects 299x299
RGB photographs, not 16x16 gray digits. The Frechet distance itself is the same; only the feature
extractor changes, to a CNN trained on these very digits (``scripts/train_classifier.py``), so
numbers are comparable only with other numbers from the same bundled classifier.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ASSETS, digits

CLASSIFIER_WEIGHTS = ASSETS / "digits_classifier.safetensors"
FEATURE_DIM = 64
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """CNN for 1x16x16 digits in [-1, 1]: two conv+pool stages (16x16 -> 8x8 -> 4x4), a 64-d
    penultimate layer (the FID feature space) and 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 16, 16) -> (N, 64) penultimate activations (after ReLU, the head's input), the
        analogue of Inception's pool3 features."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_classifier(path: Optional[Path] = None, device: str = "cpu") -> DigitClassifier:
    """The bundled classifier (``assets/digits_classifier.safetensors``) in eval mode."""
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path or CLASSIFIER_WEIGHTS), device=device))
    return model.to(device).eval()


def digits_split(labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train_idx, test_idx) split of the digits: per class, ``round(test_fraction * n_c)``
    indices drawn with numpy's PCG64 from ``seed`` go to test. Written here (not sklearn's
    train_test_split) so the classifier's held-out set is reproducible by the tests and does not
    depend on the scikit-learn version."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.from_numpy(np.sort(np.concatenate(train))), torch.from_numpy(np.sort(np.concatenate(test)))


@torch.no_grad()
def classifier_features(x: torch.Tensor, classifier: nn.Module, batch_size: int = 512) -> np.ndarray:
    """Penultimate features of ``x`` (N, 1, 16, 16) in [-1, 1], as float64 numpy (N, 64)."""
    p = next(classifier.parameters())
    out = [classifier.features(x[i:i + batch_size].to(p.device, p.dtype)).double().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
                                ) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Frechet (2-Wasserstein^2) distance of
    two Gaussians, in float64.

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)) (the same eigenvalues,
    since S1 S2 is similar to S1^(1/2) S2 S1^(1/2)), whose argument is symmetric PSD: two
    ``eigh`` calls, real by construction, so there are no imaginary parts to discard (scipy's
    sqrtm of the non-symmetric S1 S2 returns some from rounding) and a singular covariance (a dead
    ReLU unit) needs no epsilon on the diagonal. Negative rounding eigenvalues are clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) (means and unbiased
    covariances, as pytorch-fid does)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def digits_fid(samples: torch.Tensor, reference: Optional[torch.Tensor] = None,
               classifier: Optional[nn.Module] = None) -> float:
    """FID between ``samples`` (N, 1, 16, 16) in [-1, 1] and ``reference`` (default: all 1,797 real
    digits from ``svs.experiments.data.digits``) in the bundled classifier's 64-d feature space.
    Like any FID it is biased upwards for small N: compare runs at equal sample counts."""
    if reference is None:
        reference = digits()[0]
    classifier = classifier if classifier is not None else load_classifier()
    return frechet_distance(classifier_features(samples, classifier), classifier_features(reference, classifier))


@torch.no_grad()
def recognisability(samples: torch.Tensor, classifier: nn.Module, batch_size: int = 512) -> Dict[str, object]:
    """How digit-like and how diverse ``samples`` are, by the classifier:

    - ``confidence``: mean max softmax probability (sample quality: high when each sample is
      clearly some digit);
    - ``class_entropy``: entropy (nats) of the histogram of predicted classes (mode coverage:
      ln 10 ~ 2.303 when all ten digits are produced equally often, 0 when one digit only);
    - ``class_histogram``: the predicted-class frequencies themselves.
    """
    p = next(classifier.parameters())
    probs = torch.cat([F.softmax(classifier(samples[i:i + batch_size].to(p.device, p.dtype)).double(), 1).cpu()
                       for i in range(0, len(samples), batch_size)])
    hist = torch.bincount(probs.argmax(1), minlength=NUM_CLASSES).double() / len(probs)
    nz = hist[hist > 0]
    return {
        "confidence": float(probs.max(1).values.mean()),
        "class_entropy": float(-(nz * nz.log()).sum()),
        "class_entropy_max": math.log(NUM_CLASSES),
        "class_histogram": hist.tolist(),
    }


SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
SSIM_SIGMA = 1.5


def gaussian_window(size: int, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian (size, size) in float64, the outer product of a 1-D one."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, window_size: Optional[int] = None) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of each pair of images (N, C, H, W) in [-1, 1] -> (N,) float64.

    Images are mapped to [0, 1] (data range L = 1, so C1 = (0.01 L)^2, C2 = (0.03 L)^2); local
    statistics use a Gaussian window (sigma 1.5) over 'valid' positions only, as in the reference
    MATLAB code, and the SSIM map is averaged over positions and channels.

    Window: 11 (the paper's) when min(H, W) >= 32, else 7. On 16x16 digits an 11x11 window has
    only 6x6 valid positions, each covering nearly half the image, so the 'local' statistics are
    close to global ones and strokes in the outer ring count for less than central pixels; 7x7
    (+-2 sigma, 10x10 positions) keeps the statistics local. (scikit-image's default is 7 too.)
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    n, c, h, w = a.shape
    size = window_size or (11 if min(h, w) >= 32 else 7)
    if size > min(h, w):
        raise ValueError(f"window {size} larger than the {h}x{w} images")
    win = gaussian_window(size).to(a.device).expand(c, 1, size, size)
    x = (a.to(torch.float64) + 1) / 2
    y = (b.to(torch.float64) + 1) / 2

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return s.flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: Optional[int] = None) -> float:
    """Mean over the batch of per-image SSIM (see ``ssim_per_image``): how closely a pruned or
    fine-tuned model's samples reproduce the teacher's from the same noise."""
    return float(ssim_per_image(a, b, window_size).mean())
