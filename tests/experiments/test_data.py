"""svs.experiments.data: the bundled digits."""
import pytest

pytest.importorskip("sklearn")

from svs.experiments.data import digits  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return digits()[0]


def test_digits_are_real_images_in_range(data):
    assert data.shape == (1797, 1, 16, 16)
    assert data.min() >= -1 and data.max() <= 1 and data.std() > 0.3
