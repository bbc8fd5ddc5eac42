"""Optional dependencies: which pip extra installs each, and one clear error when one is missing."""
import importlib.util
from typing import Dict

# extra -> {module: the PyPI distribution that provides it}; pyproject.toml's extras list the same.
EXTRAS: Dict[str, Dict[str, str]] = {
    "plot": {"matplotlib": "matplotlib"},
    "experiments": {"diffusers": "diffusers", "torch_pruning": "torch-pruning", "sklearn": "scikit-learn",
                    "matplotlib": "matplotlib"},
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(extra: str, what: str) -> None:
    """Raises MissingExtra unless every module of ``extra`` can be imported (nothing is imported)."""
    missing = [dist for module, dist in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)}, not installed: pip install 'svs-kernels[{extra}]'")
