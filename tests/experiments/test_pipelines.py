"""svs.experiments.pipelines: the variants, training and sampling, on tiny budgets."""
import copy

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("torch_pruning")
pytest.importorskip("sklearn")

import svs  # noqa: E402
from svs.experiments.pipelines import TrainConfig, build_teacher, digits, sample_ddim, student, train_ddpm  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits()[0]


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
