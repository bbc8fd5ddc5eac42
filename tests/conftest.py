"""Shared test setup: Triton kernels run under the interpreter when there is no GPU (the variable
must be set before triton is first imported), reproducible random inputs, and (SVS_TEST_LOG=PATH)
a log of one JSON line per test, written as each test ends, so a run killed at a time limit (the
GPU check, .ci/gpu_check.sh) keeps every result it had. The float64 references the tests compare
against are in reference.py."""
import json
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402


# Random inputs are reproducible: every seed derives from the test's id and SVS_TEST_SEED (default
# 0; set it to draw other inputs), and hypothesis draws its examples deterministically.
SEED = int(os.environ.get("SVS_TEST_SEED", "0"))
settings.register_profile("svs", derandomize=True, database=None, print_blob=True)
settings.load_profile("svs")


def pytest_report_header(config):
    return f"random inputs: SVS_TEST_SEED={SEED} (seeds derive from it and each test's id)"


@pytest.fixture
def seed(request) -> int:
    """This test's seed (printed, so a failure's captured output shows it)."""
    value = (zlib.crc32(request.node.nodeid.encode()) + SEED) % 2**32
    print(f"seed {value} (SVS_TEST_SEED={SEED}, test {request.node.nodeid})")
    return value


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


class _TestLog:
    """SVS_TEST_LOG: {"collected": N}, then {"nodeid", "outcome", "when", "seconds", "message"} per
    test (setup errors and skips included), one flushed line each, in the process that reports
    (pytest-xdist's controller)."""

    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)

    def _write(self, record) -> None:
        self.file.write(json.dumps(record) + "\n")

    def pytest_collection_finish(self, session):
        self._write({"collected": len(session.items)})

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.passed:
            return
        outcome = report.outcome
        if report.when != "call" and report.failed:
            outcome = "error"
        elif hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        else:
            message = (report.longreprtext or "").strip().splitlines()[-1:] or [""]
            message = message[0]
        self._write({"nodeid": report.nodeid, "outcome": outcome, "when": report.when,
                     "seconds": round(report.duration, 3), "message": message[:500]})


class _XdistCollected:
    """The test count under pytest-xdist (its controller collects nothing itself)."""

    def __init__(self, log: _TestLog):
        self.log, self.done = log, False

    def pytest_xdist_node_collection_finished(self, node, ids):
        if not self.done:
            self.done = True
            self.log._write({"collected": len(ids)})


def pytest_configure(config):
    path = os.environ.get("SVS_TEST_LOG")
    if path and not hasattr(config, "workerinput"):  # not in an xdist worker
        log = _TestLog(path)
        config.pluginmanager.register(log, "svs-test-log")
        if config.pluginmanager.has_plugin("xdist"):
            config.pluginmanager.register(_XdistCollected(log), "svs-test-log-xdist")
