"""svs.experiments.pruning: structured pruning of diffusers UNets, and SVS of the pruned DDPM
against the authors' rules."""
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")
pytest.importorskip("torch_pruning")

import svs  # noqa: E402
from svs.experiments.data import digits  # noqa: E402
from svs.experiments.pipelines import build_teacher  # noqa: E402
from svs.experiments.pruning import prune_unet  # noqa: E402
from tests.models import assert_inf_weight_refused  # noqa: E402
from tests.reference import assert_matches, reference_bias, reference_refine  # noqa: E402


@pytest.fixture(scope="module")
def data():
    pytest.importorskip("sklearn")
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


def authors_ddpm_reference(model: nn.Module) -> dict:
    """The authors' DDPM procedure, literally, one parameter at a time in float64: reset every
    GroupNorm to 1/0, then for each named parameter without 'norm' in its name scale 'weight'
    (ndim >= 2) by U sqrt(S) V^T and 'bias' by b / sqrt(||b|| + 1e-8)."""
    expected = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.GroupNorm):
            expected[f"{module_name}.weight"] = np.ones(module.weight.shape)
            expected[f"{module_name}.bias"] = np.zeros(module.bias.shape)
    for name, p in model.named_parameters():
        if "norm" in name:
            continue
        if "weight" in name and p.ndim >= 2:
            expected[name] = reference_refine(p)
        elif "bias" in name:
            expected[name] = reference_bias(p)
    return expected


@pytest.fixture(scope="module")
def pruned_ddpm():
    from svs.experiments.pruning import pruned_ddpm_cifar10

    return pruned_ddpm_cifar10(0.5, seed=1)


def test_ddpm_preset_matches_authors_rules_parameter_by_parameter(pruned_ddpm):
    model = pruned_ddpm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = authors_ddpm_reference(model)
    report = svs.refine_model(model, preset="ddpm")
    # counted from the model itself (diffusers' UNet layout, not a number that holds for one version)
    weights = [n for n in expected if n.endswith("weight") and "norm" not in n]
    assert len(report.weights) == len(weights) > 100 and len(report.biases) == len(weights)
    for name, p in model.named_parameters():
        if name in expected:
            assert_matches(p.detach(), expected[name])
        else:
            assert torch.equal(p, before[name]), f"{name} should not change"
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    assert torch.isfinite(model(x, t).sample).all()


def test_failure_names_the_parameter_and_changes_nothing(pruned_ddpm):
    """The GroupNorm of the ddpm preset not reset either."""
    assert_inf_weight_refused(pruned_ddpm, "up_blocks.1.attentions.0.to_k.weight", "ddpm")
