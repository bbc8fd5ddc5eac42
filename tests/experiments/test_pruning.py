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


def test_torch_pruning_then_sync_then_refine_in_memory_equals_the_cli_on_the_saved_module(tmp_path):
    """The recipe in sync_channel_attributes' docstring, with Torch-Pruning called directly: the
    pruned UNet fails before the sync and runs after; refined in memory it equals the CLI's result
    on the module saved whole with torch.save (as Diff-Pruning saves it)."""
    import copy

    import torch_pruning as tp

    import svs
    from svs.cli import main
    from svs.experiments.pruning import sync_channel_attributes
    from tests.models import assert_same, tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet()
    example = {"sample": torch.randn(1, 3, 8, 8), "timestep": torch.ones((1,), dtype=torch.long)}
    tp.pruner.BasePruner(unet, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=[unet.conv_out]).step()
    assert unet.conv_in.out_channels == 4
    with pytest.raises(AssertionError):
        unet(**example)
    assert sync_channel_attributes(unet) is unet
    assert unet(**example).sample.shape == (1, 3, 8, 8)
    torch.save(unet, tmp_path / "pruned.pt")
    refined = copy.deepcopy(unet)
    svs.refine_model(refined, preset="ddpm")
    assert torch.isfinite(refined(**example).sample).all()
    assert main(["refine", str(tmp_path / "pruned.pt"), "-o", str(tmp_path / "svs.pt"), "--preset", "ddpm",
                 "--trust-pickle", "-q"]) == 0
    assert_same(torch.load(tmp_path / "svs.pt", weights_only=False).state_dict(), refined.state_dict())
