"""svs.spectrum: batching by shape, and the singular values of many matrices (for a dry run's
report, svs inspect and the digits pipeline's plot) against float64 ``numpy.linalg.svd``."""
import numpy as np
import pytest
import torch

from svs.spectrum import MAX_WORK, batches, group_by_shape, singular_values


def test_batches_bound_the_work_of_one_call():
    shapes = [(2048, 2048)] * 3 + [(64, 3, 3, 3), (8, 8)] * 5 + [(1024, 1024)] * 9
    got = batches(shapes)
    assert sorted(i for b in got for i in b) == list(range(len(shapes)))
    for b in got:
        rows, cols = shapes[b[0]][0], torch.Size(shapes[b[0]]).numel() // shapes[b[0]][0]
        assert all(shapes[i][0] == rows and torch.Size(shapes[i]).numel() // rows == cols for i in b)
        assert len(b) == 1 or len(b) * rows * cols * min(rows, cols) <= MAX_WORK
    assert [len(b) for b in got] == [1, 1, 1, 5, 5, 4, 4, 1]  # 1024^3 = 2^30: four per call


def test_group_by_shape_flattens_to_rows_by_the_rest():
    shapes = [(4, 3), (4, 1, 3), (3, 4), (4, 3, 1, 1), (0, 5)]
    assert group_by_shape(shapes) == {(4, 3): [0, 1, 3], (3, 4): [2], (0, 0): [4]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_singular_values_match_float64_reference(seed, dtype):
    """Tall, wide, 1 x N, a conv kernel, rank-deficient, ill-conditioned (kappa 1e6) and
    non-contiguous inputs, in one call; each against numpy's float64 SVD of the same (rounded)
    values. Tolerance: LAPACK's float64 svdvals is backward stable, |ds| <= ~n eps64 s_max; 1e-12
    relative to s_max is far above that and far below any error of a lower precision."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    ill = u[:, :12] @ torch.diag(torch.logspace(0, -6, 12, dtype=torch.float64)) @ v.T
    tensors = [torch.randn(9, 5, generator=g), torch.randn(3, 11, generator=g), torch.randn(1, 7, generator=g),
               torch.randn(6, 2, 3, 3, generator=g), torch.randn(8, 3, generator=g) @ torch.randn(3, 10, generator=g),
               ill, torch.randn(10, 14, generator=g)[:, ::2], torch.randn(9, 5, generator=g)]
    tensors = [t.to(dtype) for t in tensors]
    calls = []
    got = singular_values(tensors, calls.append)
    assert sum(calls) == len(tensors)
    for t, s in zip(tensors, got):
        expected = np.linalg.svd(t.double().reshape(t.shape[0], -1).numpy(), compute_uv=False)
        assert s.dtype == torch.float64 and s.device.type == "cpu"
        np.testing.assert_allclose(s.numpy(), expected, rtol=0, atol=1e-12 * expected[0])
