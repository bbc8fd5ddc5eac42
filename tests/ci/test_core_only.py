""".ci/core_only/sitecustomize.py: the core alone, for the mirror's test run (.ci/gpu_mirror.sh).
Every module of the extras (svs.extras.EXTRAS) is unimportable in the interpreter it starts in and
in the ones that interpreter starts, as if not installed; nothing else is."""
import json
import os
import subprocess
import sys
from pathlib import Path

from svs.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import importlib.util, json, subprocess, sys
names = sys.argv[1:]
found = {n: importlib.util.find_spec(n) is not None for n in names}
errors = {}
for n in names:
    try:
        __import__(n)
    except ModuleNotFoundError as err:
        errors[n] = type(err).__name__
child = subprocess.run([sys.executable, "-c", "import sys; print(sys.modules.get('sklearn', 1) is None)"],
                       capture_output=True, text=True).stdout.strip()
print(json.dumps({"found": found, "errors": errors, "child": child}))
"""


def test_the_extras_are_blocked_and_nothing_else():
    extras = sorted({m for modules in EXTRAS.values() for m in modules})
    env = {**os.environ, "PYTHONPATH": str(ROOT / ".ci" / "core_only")}
    out = subprocess.run([sys.executable, "-c", PROBE, *extras, "json", "numpy"], env=env, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out)
    assert got["found"] == {**{m: False for m in extras}, "json": True, "numpy": True}
    assert got["errors"] == {m: "ModuleNotFoundError" for m in extras}
    assert got["child"] == "True"  # a Python started from it blocks them too
