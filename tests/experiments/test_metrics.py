"""svs.experiments.metrics: the bundled digit classifier, Frechet distance / digits FID, recognisability and SSIM.
CPU only, one thread, a few seconds in all."""
import math

import numpy as np
import pytest
import torch

from svs.experiments.metrics import (
    digits_fid,
    digits_split,
    frechet_distance,
    frechet_distance_from_stats,
    load_classifier,
    recognisability,
    ssim,
    ssim_per_image,
)
from svs.experiments.data import digits


@pytest.fixture(scope="module")
def data():
    pytest.importorskip("sklearn")  # the digits; the metrics themselves are torch and numpy
    torch.set_num_threads(1)
    return digits()


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


def test_classifier_held_out_accuracy(data, clf):
    x, y = data
    _, test_idx = digits_split(y, test_fraction=0.2, seed=0)  # the split scripts/train_classifier.py held out
    assert len(test_idx) == 359
    with torch.no_grad():
        acc = float((clf(x[test_idx]).argmax(1) == y[test_idx]).double().mean())
    assert acc >= 0.95, acc  # 0.9861 when trained (digits_classifier.json)


def test_digits_split_is_stratified_and_disjoint(data):
    _, y = data
    tr, te = digits_split(y, seed=0)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == len(y)
    frac = torch.bincount(y[te], minlength=10).double() / torch.bincount(y, minlength=10).double()
    assert torch.all((frac - 0.2).abs() < 0.02)
    assert torch.equal(te, digits_split(y, seed=0)[1])


def test_fid_real_halves_small_noise_large(data, clf):
    x, _ = data
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    half = len(x) // 2
    real_real = digits_fid(x[perm[:half]], x[perm[half:]], clf)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real_noise = digits_fid(noise, classifier=clf)
    # Observed (torch 2.13 CPU, bundled classifier): real-vs-real halves 5.05 (3.6-5.1 over split
    # seeds 0-2), real-vs-uniform-noise 671.5, horizontally flipped digits vs real 115.7.
    assert 0 <= real_real < 15, real_real
    assert real_noise > 300, real_noise
    assert real_noise > 30 * real_real


def _with_exact_stats(rng, n, mu, var):
    """n samples whose sample mean is exactly mu and unbiased sample covariance exactly diag(var)."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # now cov(z) = I
    return z * np.sqrt(var) + mu


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    s2[0] = 0.0  # a singular covariance (a dead feature) must work too
    expected = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    assert frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # From samples: the feature sets are built to have exactly these sample statistics.
    s2[0] = 0.5
    expected = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    a, b = _with_exact_stats(rng, 200, mu1, s1), _with_exact_stats(rng, 300, mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # Invariant under a common rotation (covariances no longer diagonal, so no longer commuting
    # with anything special), symmetric, and zero on identical sets.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_recognisability(data, clf):
    x, _ = data
    r = recognisability(x, clf)
    assert r["confidence"] > 0.95 and r["class_entropy"] > 0.99 * math.log(10)
    one_class = recognisability(x[data[1] == 3], clf)
    assert one_class["class_entropy"] < 0.2 and max(one_class["class_histogram"]) > 0.95


def _ssim_numpy(a: np.ndarray, b: np.ndarray, size: int = 7, sigma: float = 1.5) -> float:
    """Direct SSIM of two 2-D images in [-1, 1]: a loop over every valid window position."""
    x, y = (a.astype(np.float64) + 1) / 2, (b.astype(np.float64) + 1) / 2
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim(data):
    x = data[0][:64]
    g = torch.Generator().manual_seed(0)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1)) for s in (0.05, 0.2, 0.5, 1.0)]
    assert all(hi > lo for hi, lo in zip(scores, scores[1:])), scores
    assert scores[0] < 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert torch.allclose(ssim_per_image(x, y), ssim_per_image(y, x), rtol=0, atol=1e-12)
    got = float(ssim_per_image(x[:1], y[:1])[0])
    assert got == pytest.approx(_ssim_numpy(x[0, 0].numpy(), y[0, 0].numpy()), abs=1e-5)
    # 32x32 images get the paper's 11x11 window.
    big = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    big2 = (big + 0.2 * torch.randn(big.shape, generator=g)).clamp(-1, 1)
    assert float(ssim_per_image(big[:1], big2[:1])[0]) == pytest.approx(
        _ssim_numpy(big[0, 0].numpy(), big2[0, 0].numpy(), size=11), abs=1e-5)
