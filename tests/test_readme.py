"""README.md's commands and Python block, and the user command of
docs/results/svs_experiment/results.md, run as pasted in a temporary copy of the checkout (its
tracked files), in order; ``.venv/bin/`` is this interpreter's bin folder. Every command runs
except those in SKIPPED (with the reason, printed) and those whose extra is missing. What the
commands write must be ignored by .gitignore."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svs.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "results" / "svs_experiment" / "results.md").read_text()

# A command containing the key is not run, for the reason given.
SKIPPED = {
    "scripts/setup.sh": "creates .venv and builds the extension (minutes); these tests run in that environment",
    "-m pytest tests": "the test suite itself",
    "svs finetune": "200 training steps, minutes on a CPU; tests/experiments/test_cli.py runs it with 3",
    "svs sample": "needs finetune's output; tests/experiments/test_cli.py runs it",
}
# A command containing the key needs that extra.
NEEDS = {"svs prune": "experiments", "--plot": "plot"}


def blocks(text: str, lang: str):
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def commands():
    """README's bash commands (one a line), then results.md's "for users" inspect command."""
    lines = [line for block in blocks(README, "bash") for line in block.splitlines() if line.strip()]
    user = re.search(r"Run `(svs inspect [^`]*)`", RESULTS)
    assert user, "results.md's 'for users' section lost its svs inspect command"
    return lines + [user.group(1)]


def missing(extra: str) -> bool:
    return any(importlib.util.find_spec(m) is None for m in EXTRAS[extra])


@pytest.fixture
def checkout(tmp_path):
    """The tracked files of the checkout, copied (skipped outside a git checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp_path / "checkout"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def run(command: str, cwd: Path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", command.replace(".venv/bin/", f"{BIN}/")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_readme_and_results_commands_run_as_pasted(checkout):
    before = set(os.listdir(checkout))
    ran, skipped = [], []
    for command in commands():
        reason = next((why for key, why in SKIPPED.items() if key in command), None)
        extra = next((e for key, e in NEEDS.items() if key in command and missing(e)), None)
        if reason is None and extra is not None:
            reason = f"the {extra} extra is not installed"
        if command.startswith("svs inspect pruned.pt") and not (checkout / "pruned.pt").exists():
            # results.md's command reads what README's `svs prune` writes; without the experiments
            # extra a pickled module of our own stands in for it
            run(".venv/bin/python -c \"import torch; torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), "
                "torch.nn.Conv2d(8, 4, 1)), 'pruned.pt')\"", checkout)
        if reason is not None:
            skipped.append((command, reason))
            continue
        result = run(command, checkout)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        ran.append(command)
    print("ran:", *ran, "not run:", *(f"{c}  ({why})" for c, why in skipped), sep="\n  ")
    assert any("svs refine llama" in c for c in ran) and any("svs inspect" in c for c in ran)
    written = sorted(set(os.listdir(checkout)) - before)
    assert written
    check = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, capture_output=True, text=True,
                           input="\n".join(n + "/" if (checkout / n).is_dir() else n for n in written))
    ignored = {line.rstrip("/") for line in check.stdout.splitlines()}
    assert ignored == set(written), f"not in .gitignore: {sorted(set(written) - ignored)}"


def test_readme_python_blocks_run_as_pasted(tmp_path):
    code = blocks(README, "python")
    assert code
    for block in code:
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{block}\n{result.stderr}"
