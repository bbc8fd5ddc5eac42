"""svs.pipeline_dir: diffusers pipeline folders (model_index.json and one folder per component),
refined component by component and loaded back with the pipeline's from_pretrained; the errors
that name the components."""
import pytest
import torch

import svs
from svs.sharded import refine_dir
from tests.models import assert_same, in_memory, tiny_unet


def test_diffusers_pipeline_folder_refines_each_component(tmp_path):
    d = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = tiny_unet()
    d.DDPMPipeline(unet=unet, scheduler=d.DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    report = refine_dir(tmp_path / "pipe", tmp_path / "out", preset="ddpm")
    assert report.weights and all(r.name.startswith("unet/") for r in report.records)
    pipe = d.DDPMPipeline.from_pretrained(tmp_path / "out")
    mem, _ = in_memory(unet, "ddpm")
    assert_same(mem.state_dict(), pipe.unet.state_dict())
    assert (tmp_path / "out" / "scheduler" / "scheduler_config.json").read_bytes() == \
        (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_bytes()
    assert svs.sharded.read_record(tmp_path / "out").weights  # svs inspect reads the pipeline's record


def test_pipeline_folder_errors_name_the_components(tmp_path):
    from svs.io import CheckpointError

    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}')
    (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unet: diffusion_pytorch_model\.bin"):
        refine_dir(tmp_path / "pipe", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pipeline_folder_with_no_selected_weight_names_them(tmp_path):
    pytest.importorskip("diffusers")
    import diffusers

    torch.manual_seed(0)
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match=r"selects no weight in any component of .* \(unet\)"):
        refine_dir(tmp_path / "p", tmp_path / "out", include="nothing-matches-this")
    assert not (tmp_path / "out").exists()


def test_records_hold_no_absolute_paths(tmp_path):
    d = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    d.DDPMPipeline(unet=tiny_unet(), scheduler=d.DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    refine_dir(tmp_path / "pipe", tmp_path / "out", preset="ddpm")
    for record in (tmp_path / "out" / "svs_refine.json", tmp_path / "out" / "unet" / "svs_refine.json"):
        text = record.read_text()
        assert str(tmp_path) not in text and '"source": "' in text
