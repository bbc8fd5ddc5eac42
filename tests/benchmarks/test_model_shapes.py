"""benchmarks/model_shapes.py: the committed shapes are those of the real models.

Rebuilding needs diffusers and torch-pruning (the main CI environment has both; the GPU image, and
so its mirror, has neither: there this skips, and the workloads still load from the data)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import model_shapes  # noqa: E402
from benchmarks.workloads import get_workload  # noqa: E402


@pytest.mark.parametrize("name", list(model_shapes.MODELS))
def test_committed_shapes_match_the_model(name):
    pytest.importorskip("diffusers", reason="rebuilding the model needs diffusers")
    if name.startswith("ddpm"):
        pytest.importorskip("torch_pruning", reason="rebuilding the pruned DDPM needs torch-pruning")
    assert model_shapes.build(name) == model_shapes.load(name), (
        f"benchmarks/shapes/{name}.json drifted from the model: python -m benchmarks.model_shapes --write {name}")


@pytest.mark.parametrize("name", list(model_shapes.MODELS))
def test_workloads_load_without_diffusers(name, monkeypatch):
    for lib in ("diffusers", "torch_pruning", "svs.experiments.pruning"):
        monkeypatch.setitem(sys.modules, lib, None)  # importing it now raises ImportError
    get_workload.cache_clear()
    try:
        wl = get_workload(name)
    finally:
        get_workload.cache_clear()
    assert len(wl) > 0 and wl.n_shapes > 0


def test_check_reports_a_drift(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_shapes, "SHAPES_DIR", tmp_path)
    monkeypatch.setitem(model_shapes.MODELS, "toy", ("a toy", lambda: [("w", (2, 3))]))
    model_shapes.write("toy")
    assert model_shapes.load("toy") == [("w", (2, 3))]
    assert model_shapes.main(["--check", "toy"]) == 0
    monkeypatch.setitem(model_shapes.MODELS, "toy", ("a toy", lambda: [("w", (2, 4))]))
    capsys.readouterr()
    assert model_shapes.main(["--check", "toy"]) == 1 and "differs from the model" in capsys.readouterr().out
