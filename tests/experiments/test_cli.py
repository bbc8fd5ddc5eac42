"""svs.experiments.cli: the demo, prune, finetune and sample subcommands, as a user runs them."""
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("torch_pruning")
pytest.importorskip("sklearn")

from svs.cli import main  # noqa: E402
from svs.experiments.pipelines import build_teacher  # noqa: E402


def test_cli_prune_finetune_sample(tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    torch.save(build_teacher().state_dict(), teacher)
    pruned, tuned, grid = tmp_path / "p.pt", tmp_path / "t.pt", tmp_path / "s.png"
    assert main(["prune", str(teacher), "-o", str(pruned), "--ratio", "0.5", "--svs", "--importance", "magnitude"]) == 0
    # svs prune writes a whole pickled module: reading it back needs consent
    assert main(["finetune", str(pruned), "-o", str(tuned), "--steps", "3", "--batch-size", "8", "-q"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not tuned.exists()
    assert main(["finetune", str(pruned), "-o", str(tuned), "--steps", "3", "--batch-size", "8", "-q",
                 "--trust-pickle"]) == 0
    assert (tmp_path / "t.pt.ckpt").exists()
    assert main(["sample", str(tuned), "-o", str(grid), "--n", "4", "--steps", "2", "--trust-pickle"]) == 0
    assert grid.read_bytes()[:4] == b"\x89PNG"
    assert main(["prune", str(teacher), "-o", str(pruned)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_demo_runs(tmp_path):
    """The README's main job, on a tiny budget: bundled teacher, prune, with/without SVS, fine-tune."""
    pytest.importorskip("diffusers")
    pytest.importorskip("torch_pruning")
    pytest.importorskip("sklearn")
    result = subprocess.run([sys.executable, "-m", "svs.cli", "demo", "-o", str(tmp_path), "--steps", "4",
                             "--eval-samples", "16"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "FID pruned" in result.stdout and "refined" in result.stdout
    for name in ("fid.png", "spectrum.png", "demo.json"):
        assert (tmp_path / name).exists(), name


def test_demo_keeps_the_old_out_spelling():
    from svs.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--out", "x"]).output == "x" == parser.parse_args(["demo", "-o", "x"]).output
    assert parser.parse_args(["demo"]).output == "svs-demo"
    assert not re.search(r"--out\b", parser._subparsers._group_actions[0].choices["demo"].format_help())  # hidden


def test_finetune_log_has_no_progress_lines_and_a_real_loss(tmp_path):
    """Into a redirected log (not a terminal): no tqdm carriage returns; a run shorter than the
    logging interval still reports the loss it computed, not nan."""
    teacher = tmp_path / "teacher.pt"
    torch.save(build_teacher().state_dict(), teacher)
    with open(tmp_path / "log", "w") as log:
        result = subprocess.run([sys.executable, "-m", "svs.cli", "finetune", str(teacher), "-o", str(tmp_path / "t.pt"),
                                 "--steps", "2", "--batch-size", "4"], stdout=log, stderr=subprocess.STDOUT)
    text = (tmp_path / "log").read_text()
    assert result.returncode == 0, text
    assert "\r" not in text and "nan" not in text
    assert re.search(r"fine-tuned 2 steps \(mean loss \d+\.\d{4} over steps 1-2\)", text), text
