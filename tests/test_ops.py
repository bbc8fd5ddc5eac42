"""svs.refine / svs.refine_ as Python API: wrong arguments are TypeError / ValueError that say what
was expected, and tensors that require grad follow torch's in-place rules."""
import pytest
import torch

import svs

W = torch.ones(3, 4)

WRONG = [
    # (weights, biases, kwargs, exception, message)
    (W, None, {}, TypeError, "weights must be a list of tensors, got a single tensor; pass \\[tensor\\]"),
    ([W], torch.ones(3), {}, TypeError, "biases must be a list of tensors \\(or None\\), got a single tensor"),
    ("w", None, {}, TypeError, "weights must be a list of tensors, got str"),
    ([W, 3.0], None, {}, TypeError, "weights\\[1\\] must be a tensor, got float"),
    ([W], [3.0], {}, TypeError, "biases\\[0\\] must be a tensor or None, got float"),
    ([torch.ones(3, 4, dtype=torch.int64)], None, {}, TypeError, "weights\\[0\\] has dtype torch.int64; expected float"),
    ([W], [torch.ones(3, dtype=torch.int32)], {}, TypeError, "biases\\[0\\] has dtype torch.int32"),
    ([], None, {}, ValueError, "weights is empty"),
    ([W], [None, None], {}, ValueError, "got 1 weights but 2 biases"),
    ([torch.ones(4)], None, {}, ValueError, "weights\\[0\\] has shape \\[4\\]; SVS needs ndim >= 2"),
    ([torch.ones(0, 4)], None, {}, ValueError, "weights\\[0\\] is empty"),
    ([W], [torch.ones(4)], {}, ValueError, "biases\\[0\\] has shape \\[4\\]; expected \\[3\\]"),
    ([W], None, {"map": "cube"}, ValueError, "unknown map 'cube'; expected one of sqrt"),
    ([W], None, {"map": "power:x"}, ValueError, "unknown map 'power:x'"),
    ([W], None, {"eps": 0.0}, ValueError, "eps must be a finite number > 0, got 0.0"),
    ([W], None, {"eps": float("nan")}, ValueError, "eps must be a finite number > 0"),
]


@pytest.mark.parametrize("weights,biases,kwargs,exc,match", WRONG)
def test_wrong_arguments(weights, biases, kwargs, exc, match):
    for fn in (svs.refine, svs.refine_):
        with pytest.raises(exc, match=match):
            fn(weights, biases, **kwargs)
    assert torch.equal(W, torch.ones(3, 4))


def test_power_map_with_a_number_is_accepted():
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.float64)
    (out,), _ = svs.refine((w,), map="power:0.25")  # any sequence, not only a list
    expected = torch.linalg.svdvals(w) ** 0.25
    torch.testing.assert_close(torch.linalg.svdvals(out), expected, rtol=1e-10, atol=0)


def test_functional_results_are_detached():
    w = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    (nw,), (nb,) = svs.refine([w], [b])
    assert not nw.requires_grad and not nb.requires_grad and w.grad is None


def test_inplace_refuses_tensors_that_require_grad_as_torch_does():
    p = torch.nn.Parameter(torch.randn(4, 3))
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"weights\[0\] requires grad.*torch.no_grad\(\)"):
        svs.refine_([p])
    assert torch.equal(p.detach(), before)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        p.mul_(2)  # torch's own rule, for comparison
    with torch.no_grad():  # as an optimizer step: allowed, not recorded
        svs.refine_([p])
    (expected,), _ = svs.refine([before])
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0)
