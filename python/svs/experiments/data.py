"""The bundled data: scikit-learn's handwritten digits at 16x16, and where the trained assets live.

scikit-learn's digits (1,797 real 8x8 scans of handwritten digits, 17 gray levels, in the wheel
itself) are a real image set that needs no download, small enough for CPU training in minutes and
structured enough that a sample is recognisable or not; they are upsampled to 16x16 (bilinear) so
the UNet has two downsampling levels as CIFAR's does.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
ASSETS = Path(__file__).resolve().parent / "assets"  # the teacher and the classifier (scripts/train_*.py)


def digits(size: int = IMAGE_SIZE) -> tuple:
    """(images in [-1, 1] of shape (1797, 1, size, size), labels) from scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x * 2 - 1, torch.tensor(d.target)
