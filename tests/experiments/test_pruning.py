"""svs.experiments.pruning: structured pruning of diffusers UNets."""
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("torch_pruning")
pytest.importorskip("sklearn")

from svs.experiments.data import digits  # noqa: E402
from svs.experiments.pipelines import build_teacher  # noqa: E402
from svs.experiments.pruning import prune_unet  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits()[0]


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_pruning_shrinks_and_still_runs(importance, data):
    model = build_teacher()
    n0 = sum(p.numel() for p in model.parameters())
    prune_unet(model, 0.5, importance, images=data)
    n1 = sum(p.numel() for p in model.parameters())
    assert 0.15 * n0 < n1 < 0.4 * n0  # channels halve, so conv weights shrink ~4x
    assert model.conv_out.out_channels == 1
    assert model(data[:2], torch.tensor([5, 900])).sample.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown importance"):
        prune_unet(build_teacher(), 0.5, "random")
