"""svs.refine / svs.refine_ as Python API: wrong arguments are TypeError / ValueError that say what
was expected, and tensors that require grad follow torch's in-place rules."""
import re

import pytest
import torch

import svs
import svs_kernels

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


# ---- the lists and the map parser come from the extension -----------------------------------
def test_python_lists_are_the_extensions():
    from svs_kernels.triton_ops import _maps

    names = tuple(torch.ops.svs._map_names())
    assert svs.MAPS == svs.ops.MAPS == _maps.NAMES == names
    for code, name in enumerate(names):  # a name's code is its index; "power:<p>" stands for the power maps
        probe = "power:1" if name == "power:<p>" else name
        assert _maps.parse_map(probe) == (code, 1.0) == tuple(torch.ops.svs._parse_map(probe))
        assert _maps.CODES[name.split(":")[0]] == code
    assert names[_maps.IDENTITY] == "identity"


PARSED = [  # (map, (code name, power) or the start of the C++ error)
    ("power:1e-3", ("power", 1e-3)),
    ("power: 2", ("power", 2.0)),  # the number's leading whitespace is skipped, as std::stod does
    ("power:0x1p-2", ("power", 0.25)),
    ("power:-.5", ("power", -0.5)),
    ("power:nan", "svs.refine: map 'power:<p>' needs a finite number p, got 'power:nan'"),
    ("power:1e999", "svs.refine: map 'power:<p>' needs a finite number p"),
    ("power:2 ", "svs.refine: map 'power:<p>' needs a finite number p"),
    ("power:<p>", "svs.refine: map 'power:<p>' needs a finite number p"),
    ("bogus", "svs.refine: unknown map 'bogus'; expected one of sqrt, log1p, abslog, power:<p>, ones"),
    ("Sqrt", "svs.refine: unknown map 'Sqrt'"),
    ("", "svs.refine: unknown map ''"),
]


@pytest.mark.parametrize("name,expected", PARSED, ids=[repr(n) for n, _ in PARSED])
def test_parse_map(name, expected):
    """svs::_parse_map, svs_kernels' parse_map, check_args and the operator agree on every map."""
    from svs_kernels.triton_ops._maps import CODES, parse_map

    w = torch.full((1, 1), 2.0, dtype=torch.float64)
    if isinstance(expected, tuple):
        code, power = CODES[expected[0]], expected[1]
        assert tuple(torch.ops.svs._parse_map(name)) == (code, power)
        assert parse_map(name) == (code, power)
        (out,), _ = svs.refine([w], map=name, method="svd")
        assert out.item() == pytest.approx(2.0**power, rel=1e-15)
        return
    for parse in (torch.ops.svs._parse_map, parse_map):
        with pytest.raises(ValueError) as err:
            parse(name)
        assert str(err.value).startswith(expected)
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        torch.ops.svs.refine([w], [None], name, 1e-8, "svd")
    with pytest.raises(ValueError, match=f"unknown map {re.escape(repr(name))}; expected one of sqrt, log1p"):
        svs.refine([w], map=name)


def test_method_names_are_what_the_kernel_checks():
    """svs.ops.method_names lists exactly the method= values the CPU kernel accepts: each one runs,
    and the error for any other names them all (the error and the list are one list in C++)."""
    cpu = svs.ops.method_names("cpu")
    assert cpu and cpu[0] == "auto" and "aten" in cpu
    assert svs.ops.method_names(torch.device("cpu")) == cpu
    w = torch.randn(4, 3, dtype=torch.float64)
    (ref,), _ = svs.refine([w], method="svd")
    for m in cpu:
        (out,), _ = svs.refine([w], method=m)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    expected = ", ".join(cpu[:-1]) + " or " + cpu[-1]
    with pytest.raises(ValueError, match=f"method 'qr' is not available on CPU; expected {expected}$"):
        svs.refine([w], method="qr")
    cuda = svs.ops.method_names("cuda")
    assert bool(cuda) == svs_kernels.has_cuda_kernel()
    assert svs.ops.method_names("cuda:0") == cuda
    assert svs.ops.method_names("meta") == []


def test_method_names_run_the_routes_they_name():
    """Each method= value of svs.ops.method_names("cpu") is listed once and runs what it names, as
    refine_with_spectra reports the route: "svd" and "gram" the ATen route of that name, "aten"
    and "auto" an ATen route (the CPU has no other)."""
    cpu = svs.ops.method_names("cpu")
    assert len(set(cpu)) == len(cpu) and {"auto", "aten", "svd", "gram"} <= set(cpu)
    routes = svs.ops.route_names()
    w = torch.randn(7, 5, dtype=torch.float64)
    for m in cpu:
        *_, (route,) = svs.refine_with_spectra([w], method=m)
        assert route in routes and route.startswith("aten:"), (m, route)
        if m not in ("auto", "aten"):
            assert route == f"aten:{m}", (m, route)


def test_refine_inplace_refuses_overlapping_inputs():
    """README: svs.refine_ refines "in place"; inputs that share memory would be overwritten with
    another weight's result, so overlapping views are one ValueError and nothing changes; views of
    one storage that share no element are refined."""
    import svs

    w = torch.randn(6, 8, dtype=torch.float64)
    before = w.clone()
    for views in ([w[:, :5], w[:, 3:]], [w, w[1:3]], [w[:1].expand(6, 8), torch.randn(6, 8)]):
        with pytest.raises(ValueError, match="overlap in memory|share memory"):
            svs.refine_(views)
        assert torch.equal(w, before)
    left, right = w[:, ::2], w[:, 1::2]
    expected = svs.refine([left.clone(), right.clone()])[0]
    svs.refine_([left, right])
    assert torch.equal(left, expected[0]) and torch.equal(right, expected[1])

