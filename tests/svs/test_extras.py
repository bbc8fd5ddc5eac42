"""svs.extras and the core's dependencies: ``svs`` works with only torch, numpy, safetensors and
tqdm; a missing optional module is one error naming the pip extra that installs it."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from svs.extras import EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = sorted({m for modules in EXTRAS.values() for m in modules} | {"triton", "scipy", "PIL"})


def test_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert sorted(extras[extra]) == sorted(modules.values()), extra


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec then reports it missing
    with pytest.raises(MissingExtra, match=r"plotting needs matplotlib.*pip install 'svs-kernels\[plot\]'"):
        require("plot", "plotting")


def test_core_runs_without_any_optional_module(tmp_path):
    """In a fresh interpreter where every optional module is unimportable: refine_model, the
    ``svs refine`` and ``svs inspect`` commands work, and ``svs demo`` / ``--plot`` fail with one
    line naming their extra."""
    script = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # import fails, find_spec returns None
        import torch, svs
        from safetensors.torch import save_file
        from svs.cli import main
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 3))
        print("weights", len(svs.refine_model(model).weights))
        save_file({{"a.weight": torch.randn(5, 4), "a.bias": torch.randn(5)}}, r"{tmp_path}/w.safetensors")
        print("refine", main(["refine", r"{tmp_path}/w.safetensors", "-o", r"{tmp_path}/out.safetensors", "-q"]))
        print("inspect", main(["inspect", r"{tmp_path}/w.safetensors"]))
        print("plot", main(["inspect", r"{tmp_path}/w.safetensors", "--plot", r"{tmp_path}/s.png"]))
        print("demo", main(["demo", "--out", r"{tmp_path}/demo"]))
        loaded = sorted(n for n in {OPTIONAL!r} if sys.modules.get(n) is not None)
        print("optional modules imported:", loaded)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "weights 2" in out and "refine 0" in out and "inspect 0" in out, out
    assert "plot 2" in out and "demo 2" in out, out
    assert "optional modules imported: []" in out
    assert "pip install 'svs-kernels[plot]'" in run.stderr
    assert "svs demo needs" in run.stderr and "pip install 'svs-kernels[experiments]'" in run.stderr
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "demo").exists()
