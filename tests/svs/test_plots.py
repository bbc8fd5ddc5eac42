"""svs.plots: the figures are byte-stable (docs/results tracks some): the same data gives the same
bytes in every format, whatever the date and matplotlib's version, and a spectrum that differs in
its last bits draws the same histogram."""
import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from svs.plots import plot_spectra, pyplot, save_figure, save_image_grid  # noqa: E402

FORMATS = ["png", "svg", "pdf"]


def spectra(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g, dtype=torch.float64) * 10 for n in (40, 17, 64)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_figure_gives_the_same_bytes(fmt, tmp_path, monkeypatch):
    import matplotlib

    plt = pyplot()

    def draw(path):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([1, 2, 4], label="a")
        ax.legend()
        save_figure(fig, path)
        plt.close(fig)
        return path.read_bytes()

    first = draw(tmp_path / f"a.{fmt}")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # would set the date, were one written
    assert draw(tmp_path / f"b.{fmt}") == first
    assert matplotlib.__version__.encode() not in first  # the version is no part of the file


@pytest.mark.parametrize("fmt", FORMATS)
def test_spectrum_histogram_ignores_the_last_bits(fmt, tmp_path, seed):
    before = spectra(seed)
    after = [s.sqrt() for s in before]
    nudged = [torch.from_numpy(np.nextafter(s.numpy(), np.inf)) for s in before]  # one ulp up
    plot_spectra({"pruned": before, "pruned + SVS": after}, str(tmp_path / f"a.{fmt}"))
    plot_spectra({"pruned": nudged, "pruned + SVS": after}, str(tmp_path / f"b.{fmt}"))
    plot_spectra({"pruned": [s * 1.5 for s in before], "pruned + SVS": after}, str(tmp_path / f"c.{fmt}"))
    a, b, c = ((tmp_path / f"{n}.{fmt}").read_bytes() for n in "abc")
    assert a == b and a != c  # a real change still shows


def test_image_grid_is_byte_stable(tmp_path):
    images = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_image_grid(images, tmp_path / "a.png", nrow=3)
    save_image_grid(images, tmp_path / "b.png", nrow=3)
    save_image_grid(-images, tmp_path / "c.png", nrow=3)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a == b != c and b"Matplotlib" not in a
