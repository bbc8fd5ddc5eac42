"""Dependencies point one way: csrc -> svs_kernels -> svs -> svs.experiments -> benchmarks, scripts,
and tests import only the layer they test and below (issue 21, item 1).

Every .py file under python/svs, svs_kernels, benchmarks, scripts and tests is parsed (ast: every
import statement, at module level or inside a function; imports spelled as strings, such as
`python -m svs.cli` in a subprocess, are not imports). Each file has a layer (LAYER below, by the
longest matching module prefix); it may import modules of its layer and below, never above. The
tests of a layer sit in the folder of its name (tests/csrc tests the extension, which Python loads
through svs_kernels). The exceptions are listed with their reasons in EXCEPTIONS: the debt to pay,
visible; an entry no longer needed fails the test, so the list only shrinks.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("python/svs", "svs_kernels", "benchmarks", "scripts", "tests")

# Layers, bottom to top, and the modules (by name prefix; the longest prefix decides) in each.
KERNELS, CORE, EXPERIMENTS, HARNESS, TESTS = range(5)
LAYER = {
    "svs_kernels": KERNELS,
    "svs": CORE,
    "svs.experiments": EXPERIMENTS,
    "benchmarks": HARNESS,
    "scripts": HARNESS,
    "tests": TESTS,  # nothing outside tests imports them
    # the tests of each layer, and the helpers they share, at the layer they may reach
    "tests.csrc": KERNELS,
    "tests.svs_kernels": KERNELS,
    "tests.reference": KERNELS,  # the float64 reference: torch only
    "tests.conftest": KERNELS,
    "tests.svs": CORE,
    "tests.models": CORE,  # tiny real-library models and their checkpoints
    "tests.experiments": EXPERIMENTS,
    "tests.benchmarks": HARNESS,
    "tests.ci": HARNESS,
    "tests.test_layers": KERNELS,
}

# (file, imported module): why the file still imports above its layer.
EXCEPTIONS = {}

LAYER_NAMES = {KERNELS: "svs_kernels", CORE: "svs (core)", EXPERIMENTS: "svs.experiments",
               HARNESS: "benchmarks/scripts", TESTS: "tests"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "python":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str):
    """The layer of a module of this project, or None for any other (torch, the standard library)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER:
            return LAYER[".".join(parts[:n])]
    return None


def imports(path: Path, root: Path = ROOT):
    """(line, names) of every name path (under root) imports: (m,) for `import m`, (p, p.m) for
    `from p import m` (m may be a submodule of p, or a name in it); relative imports resolved."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, (alias.name,)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                yield node.lineno, (base, f"{base}.{alias.name}")


def files():
    return sorted(p for top in SOURCES for p in (ROOT / top).rglob("*.py"))


def upward_imports():
    """{(file, module): line} of every import of a module above the file's layer (of p or p.m
    for `from p import m`, the first that is above)."""
    found = {}
    for path in files():
        own = layer_of(module_name(path))
        for line, names in imports(path):
            above = [name for name in names if (layer_of(name) or 0) > own]
            if above:
                found.setdefault((str(path.relative_to(ROOT)), above[0]), line)
    return found


def test_every_file_has_a_layer():
    assert files(), f"no sources found under {ROOT}"
    assert [str(p.relative_to(ROOT)) for p in files() if layer_of(module_name(p)) is None] == []


def test_imports_point_down():
    found = upward_imports()
    bad = [f"{file}:{line} ({LAYER_NAMES[layer_of(module_name(ROOT / file))]}) imports {name} "
           f"({LAYER_NAMES[layer_of(name)]})" for (file, name), line in sorted(found.items())
           if (file, name) not in EXCEPTIONS]
    assert bad == [], "imports of a layer above:\n" + "\n".join(bad)
    stale = sorted(set(EXCEPTIONS) - set(found))
    assert stale == [], f"no longer needed, remove from EXCEPTIONS: {stale}"


@pytest.mark.parametrize("source, expected", [
    ("import svs.experiments.cli\n", [("svs.experiments.cli",)]),
    ("def f():\n    from ..experiments import cli\n", [("svs.experiments", "svs.experiments.cli")]),
    ("from . import io, spectrum\n", [("svs.sub", "svs.sub.io"), ("svs.sub", "svs.sub.spectrum")]),
    ("import torch\nfrom typing import List\n", [("torch",), ("typing", "typing.List")]),
])
def test_the_scan_sees_every_kind_of_import(tmp_path, source, expected):
    """Absolute, relative and function-level imports, resolved from the file's package; an
    import of the experiments from the core is one the scan reports."""
    path = tmp_path / "python" / "svs" / "sub" / "mod.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    got = [name for _, name in imports(path, tmp_path)]
    assert got == expected
    assert module_name(path, tmp_path) == "svs.sub.mod" and layer_of("svs.sub.mod") == CORE
    assert any(layer_of(n) == EXPERIMENTS for names in got for n in names) == ("experiments" in source)
    assert layer_of("torch.nn") is None and layer_of("svs_kernels.triton_ops") == KERNELS
