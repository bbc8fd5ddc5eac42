"""The prune -> SVS -> fine-tune -> sample pipeline on tiny budgets."""
import copy

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("torch_pruning")
pytest.importorskip("sklearn")

import svs  # noqa: E402
from svs.cli import main  # noqa: E402
from svs.experiments.pipelines import TrainConfig, build_teacher, digits, sample_ddim, student, train_ddpm  # noqa: E402
from svs.experiments.pruning import prune_unet  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits()[0]


def test_digits_are_real_images_in_range(data):
    assert data.shape == (1797, 1, 16, 16)
    assert data.min() >= -1 and data.max() <= 1 and data.std() > 0.3


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


def test_variants(data):
    teacher = build_teacher()
    pruned = student(teacher, 0.5, "pruned", seed=3, images=data)
    refined = student(teacher, 0.5, "svs", seed=3, images=data)
    expected = copy.deepcopy(pruned)
    svs.refine_model(expected, preset="ddpm", stats=False)
    for (n, a), b in zip(refined.named_parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    random = student(teacher, 0.5, "random", seed=3, images=data)
    assert not torch.equal(random.conv_in.weight, pruned.conv_in.weight)
    assert random.conv_in.weight.shape == pruned.conv_in.weight.shape


def test_training_resumes_exactly(tmp_path, data):
    torch.manual_seed(0)
    base = student(build_teacher(), 0.7, "pruned", images=data)
    cfg = TrainConfig(steps=4, batch_size=8, log_every=1, checkpoint_every=2)
    straight = copy.deepcopy(base)
    train_ddpm(straight, data, cfg, progress=False)

    interrupted = copy.deepcopy(base)
    ckpt = tmp_path / "state.ckpt"
    train_ddpm(interrupted, data, TrainConfig(steps=2, batch_size=8, log_every=1, checkpoint_every=2),
               checkpoint=ckpt, progress=False)
    resumed = copy.deepcopy(base)  # a new process: fresh weights, state comes from the checkpoint
    history = train_ddpm(resumed, data, cfg, checkpoint=ckpt, progress=False)
    assert [h["step"] for h in history["loss"]] == [1, 2, 3, 4]
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddim_sampling_is_seeded():
    model = build_teacher()
    a, b = sample_ddim(model, 3, steps=3, seed=7), sample_ddim(model, 3, steps=3, seed=7)
    assert a.shape == (3, 1, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1


def test_cli_prune_finetune_sample(tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    torch.save(build_teacher().state_dict(), teacher)
    pruned, tuned, grid = tmp_path / "p.pt", tmp_path / "t.pt", tmp_path / "s.png"
    assert main(["prune", str(teacher), "-o", str(pruned), "--ratio", "0.5", "--svs", "--importance", "magnitude"]) == 0
    # svs prune writes a whole pickled module: reading it back needs consent
    assert main(["finetune", str(pruned), "-o", str(tuned), "--steps", "3", "--batch-size", "8", "-q"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not tuned.exists()
    assert main(["finetune", str(pruned), "-o", str(tuned), "--steps", "3", "--batch-size", "8", "-q",
                 "--trust-pickle"]) == 0
    assert (tmp_path / "t.pt.ckpt").exists()
    assert main(["sample", str(tuned), "-o", str(grid), "--n", "4", "--steps", "2", "--trust-pickle"]) == 0
    assert grid.read_bytes()[:4] == b"\x89PNG"
    assert main(["prune", str(teacher), "-o", str(pruned)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
