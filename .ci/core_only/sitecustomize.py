"""The core alone: the modules of the optional extras (svs.extras.EXTRAS: diffusers, torch_pruning,
sklearn, matplotlib) made unimportable in this interpreter and in every Python it starts, as if
they were not installed (issue 21, item 2). Used as

    PYTHONPATH=.ci/core_only python -m pytest tests

(Python imports a sitecustomize module found on its path at start-up). Each blocked name is None
in sys.modules: `import sklearn` raises ModuleNotFoundError and importlib.util.find_spec returns
None, as for a package that is not installed. svs.extras is read from its file, so the list is
EXTRAS and nothing else, without importing svs (and torch) at every start.
"""
import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "python" / "svs" / "extras.py"
_spec = importlib.util.spec_from_file_location("_svs_extras_for_core_only", _path)
_extras = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_extras)
BLOCKED = sorted({module for modules in _extras.EXTRAS.values() for module in modules})
for _name in BLOCKED:
    sys.modules[_name] = None
