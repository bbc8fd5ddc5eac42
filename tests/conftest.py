"""Shared test setup: Triton kernels run under the interpreter when there is no GPU (the variable
must be set before triton is first imported), and reproducible random inputs. The float64
references the tests compare against are in reference.py."""
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
