"""setup.py: the wheel's metadata pins torch to the version the extension is built against."""
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_pins_the_torch_the_extension_is_built_against(tmp_path):
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metadata = (tmp_path / result.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    public = torch.__version__.split("+")[0]  # the local label (+cpu, +cu130) dropped: see setup.py
    assert [r for r in requires if re.match(r"torch\b(?!-)", r)] == [f"torch=={public}"]
    from packaging.specifiers import SpecifierSet  # the installed torch, local label and all, satisfies it

    assert SpecifierSet(f"=={public}").contains(torch.__version__)


def test_installed_package_requires_the_running_torch():
    """The installed metadata (pip install -e . or a wheel) names the torch _C was built against,
    which is the torch running: the requirement is satisfied here."""
    from importlib.metadata import requires

    from packaging.specifiers import SpecifierSet

    pins = [r for r in requires("svs-kernels") if re.match(r"torch\b(?!-)", r)]
    assert pins == [f"torch=={torch.__version__.split('+')[0]}"] and SpecifierSet(pins[0][len("torch"):]).contains(torch.__version__)
