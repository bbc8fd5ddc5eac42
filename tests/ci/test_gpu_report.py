""".ci/gpu_report.py: what the GPU check brings back is whole, and its summary says what happened.
(The whole staged check is rehearsed in CI by .ci/gpu_mirror.sh; these test its parts.)"""
import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / ".ci" / "gpu_report.py"
_spec = importlib.util.spec_from_file_location("gpu_report", _PATH)
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)


def _stage1_work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.tsv").write_text("versions\tok\t3\nbuild\tok\t140\ntests\tFAILED: pytest exit 1\t150\n")
    lines = [{"collected": 4},
             {"nodeid": "t.py::a", "outcome": "passed", "when": "call", "seconds": 1, "message": ""},
             {"nodeid": "t.py::b", "outcome": "failed", "when": "call", "seconds": 1, "message": "assert 1 == 2"},
             {"nodeid": "t.py::c", "outcome": "skipped", "when": "setup", "seconds": 0, "message": "no GPU"}]
    (work / "tests.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"nodeid": "t.py::d", "out')
    (work / "versions.txt").write_text("torch: 2.11\n")
    (work / "build.log").write_text("x" * 1000)
    return work


def test_summary_counts_tests_and_names_failures(tmp_path):
    text = gpu_report.summary("1", _stage1_work(tmp_path), 300, 360, dry=False)
    assert "4 collected; 1 passed, 1 failed, 1 skipped, 1 not run (time limit)" in text  # the cut line is ignored
    assert "FAILED t.py::b: assert 1 == 2" in text and "skipped 1: no GPU" in text
    assert text.rstrip().splitlines()[-1] == "stage 1: FAILED: tests"
    assert len(gpu_report.summary("1", tmp_path / "missing", 1, 360, dry=True)) < 500  # no work: still a summary


def test_pack_then_check_out(tmp_path):
    work = _stage1_work(tmp_path)
    (work / "summary-stage1.txt").write_text(gpu_report.summary("1", work, 300, 360, dry=False))
    out = tmp_path / "out"
    gpu_report.pack("1", work, out)
    assert sorted(p.name for p in out.iterdir()) == ["stage1.tar.gz", "summary-stage1.txt", "tests.jsonl", "versions.txt"]
    log = tmp_path / "log"
    log.write_text("build output\n" + (out / "summary-stage1.txt").read_text())
    assert gpu_report.check_out(out, log) == []
    log.write_text((out / "summary-stage1.txt").read_text() + "printed after the summary\n")
    assert any("does not end with" in p for p in gpu_report.check_out(out, log))


@pytest.mark.parametrize("extra,problem", [
    ([f"f{i}.txt" for i in range(6)], "files in"),
    (["a/b/c/deep.txt"], "deeper than 2 folders"),
    (["bad name.txt"], "a name the device does not return"),
])
def test_check_out_refuses_what_the_device_would_not_return(tmp_path, extra, problem):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary-stage2.txt").write_text("stage 2: OK\n")
    for rel in extra:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    for i in range(3):
        (out / f"keep{i}.txt").write_text("x")
    log = tmp_path / "log"
    log.write_text("stage 2: OK\n")
    assert any(problem in p for p in gpu_report.check_out(out, log))


def test_check_out_refuses_a_file_over_16_mib(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary-stage1.txt").write_text("s\n")
    with open(out / "big.bin", "wb") as f:
        f.truncate(gpu_report.MAX_BYTES + 1)
    log = tmp_path / "log"
    log.write_text("s\n")
    assert any("big.bin" in p for p in gpu_report.check_out(out, log))
