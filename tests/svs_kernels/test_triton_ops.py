"""Triton kernels (svs_kernels.triton_ops): sigma-map, staging, grouped GEMM.

On a CPU-only machine these run under the Triton interpreter on CPU tensors; TRITON_INTERPRET=1 must
be set before triton is first imported (tests/conftest.py does so when CUDA is unavailable). With
CUDA they run compiled on the GPU. Every test draws fresh random inputs; the seed is in the
assertion messages.

Tolerances: the bounds of svs_kernels/triton_ops/reconstruct.py, elementwise with
B = |U| diag(f(s)) |Vh| (float64):
  float64 factors           (k + 2) 2^-53
  float32/float64 outputs   2^-20 + (3k + 2) u_acc        (3xTF32: hi/lo split of both operands)
  float16/bfloat16 outputs  2^-10 + 2^-21 + (k + 2) u_acc (TF32, operands rounded to nearest)
plus u_out (the rounding of the stored value: 2^-24 / 2^-11 / 2^-8 / 2^-53 for float32 / float16 /
bfloat16 / float64; bfloat16 2^-7 under the interpreter, which truncates), all times 1.01 for second-order terms. u_acc is the unit roundoff of the
float32 accumulation: 2^-24 (interpreter: numpy), 2^-23 on the GPU (allows a truncating tensor
core). The "+2" covers the rounding of f(s) and of U f(s). The interpreter ignores input_precision,
so the TF32 rounding and the split are done by the staging kernel in any case: tests compare with
a reference that emulates them, within the accumulation error alone.
"""
import math

import pytest
import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs.*)
from svs_kernels import triton_ops as svs_triton
from svs_kernels.triton_ops import _layout, parse_map
from tests.reference import triton_interpreter_problem

if svs_triton.available():
    from svs_kernels.triton_ops import common, gemm, stage
    from svs_kernels.triton_ops import reconstruct as R
    from svs_kernels.triton_ops import sigma_map as SM

    _INTERP = common.interpreting()
else:
    R = None
    _INTERP = False



_REASON = None
if R is None:
    _REASON = f"triton is not importable: {svs_triton.import_error()!r}"
elif not torch.cuda.is_available() and not _INTERP:
    _REASON = "no CUDA and triton was imported without TRITON_INTERPRET=1 (set it before triton is imported)"
elif _INTERP:
    _REASON = triton_interpreter_problem()
needs_triton = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or _INTERP, reason="needs CUDA, compiled Triton")

DEVICE = "cpu" if (_INTERP or not torch.cuda.is_available()) else "cuda"
MAPS = ["sqrt", "log1p", "abslog", "power:0.3", "power:-0.5", "ones", "spectral", "square", "identity"]
U_OUT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float64: 2.0**-53}
# The stored value's rounding in the kernels: the GPU rounds to nearest (U_OUT); the interpreter
# converts float32 -> bfloat16 by truncation (measured: half of all values differ from torch's
# rounding, by up to 2^-7 relative), so there the bfloat16 bound is 2^-7.
U_STORE = {**U_OUT, **({torch.bfloat16: 2.0**-7} if _INTERP else {})}


@pytest.fixture
def gen(seed):
    """A torch generator from the test's printed seed (conftest.py)."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# references (float64, mirroring csrc/refine_common.cpp apply_map)


def ref_map(s: torch.Tensor, name: str) -> torch.Tensor:
    s = s.double()
    pos = s > 0
    safe = torch.where(pos, s, torch.ones_like(s))
    if name == "sqrt":
        f = safe.sqrt()
    elif name == "log1p":
        f = safe.log1p()
    elif name == "abslog":
        f = safe.log().abs()
    elif name.startswith("power:"):
        f = safe.pow(parse_map(name)[1])
    elif name == "ones":
        f = torch.ones_like(safe)
    elif name == "spectral":
        f = safe / (s.max() if s.numel() and s.max() > 0 else 1.0)
    elif name == "square":
        f = safe * safe
    else:
        f = safe
    return torch.where(pos, f, torch.zeros_like(f))


def map_eval_rtol(s: torch.Tensor, name: str) -> torch.Tensor:
    """Elementwise relative bound between the kernels' float64 map f(s) and ref_map's, u = 2^-53.

    sqrt, square, spectral (one correctly rounded op each side: IEEE sqrt/mul/div, .rn on the GPU)
    differ by 2u; identity and ones are exact. log and exp are within 1 ulp (2u) on the GPU (CUDA's
    double-precision log/exp) and in numpy (the interpreter), torch's pow/log/log1p in the reference
    too. abslog: log on each side, 4u. log1p: Goldberg's log(1 + s) * s / ((1 + s) - 1) is within
    log's 2u plus one rounding each for the sum, product and quotient (the subtraction is exact):
    5u, and 2u for the reference: 7u. power: exp(p * log s) with log's error d1 <= 2u and the
    product's d2 <= u is exp(p log s (1 + d1 + d2)): the relative error of the argument, times
    |p log s|, becomes relative error of the result, plus exp's 2u, plus torch.pow's 2u: u (3 |p log s|
    + 4). That grows with |log s|: s = 1e-30 and p = -0.5 give 107u (1.2e-14), s near 1 about 4u.
    """
    u = 2.0**-53
    s = s.double()
    if name.startswith("power:"):
        logs = torch.where(s > 0, s, torch.ones_like(s)).log().abs()
        return u * (3 * abs(parse_map(name)[1]) * logs + 4)
    per_map = {"sqrt": 2, "square": 2, "spectral": 2, "identity": 0, "ones": 0, "abslog": 4, "log1p": 7}
    return torch.full_like(s, per_map[name] * u)


def bound_factor(op64: bool, out_dtype: torch.dtype, k: int, gpu: bool) -> float:
    """The elementwise bound of the module docstring, as a multiple of B."""
    if op64:
        rel = (k + 2) * 2.0**-53
    else:
        u_acc = 2.0**-23 if gpu else 2.0**-24
        if out_dtype in (torch.float32, torch.float64):
            rel = 2.0**-20 + (3 * k + 2) * u_acc
        else:
            rel = 2.0**-10 + 2.0**-21 + (k + 2) * u_acc
    return 1.01 * (rel + U_STORE[out_dtype])


def check_reconstruction(u, s, vh, out, name, seed):
    """Elementwise bound above, and ||out - ref||_F <= 1e-5 ||ref||_F for float32 outputs."""
    for i, (ui, si, vi, oi) in enumerate(zip(u, s, vh, out)):
        f = ref_map(si.cpu(), name)
        U, V = ui.cpu().double(), vi.cpu().double()
        ref = (U * f) @ V
        bound = (U.abs() * f.abs()) @ V.abs()
        tol = bound_factor(torch.float64 in (ui.dtype, vi.dtype), oi.dtype, si.numel(), oi.is_cuda)
        got = oi.cpu().double()
        assert not got.isnan().any(), f"seed {seed}: matrix {i} {tuple(oi.shape)} has unwritten (NaN) entries"
        err = (got - ref).abs()
        excess = err - tol * bound - 1e-300
        assert (excess <= 0).all(), (
            f"seed {seed}: matrix {i} shape {tuple(oi.shape)} map {name} dtype {oi.dtype}: max error "
            f"{err.max().item():.3e}, worst ratio {(err / (tol * bound + 1e-300)).max().item():.2f} of the bound")
        if oi.dtype == torch.float32 and ref.norm() > 0:
            rel = ((got - ref).norm() / ref.norm()).item()
            assert rel <= 1e-5, f"seed {seed}: matrix {i} relative Frobenius error {rel:.2e} > 1e-5"


def random_problem(shapes, gen, *, dtype=torch.float32, zeros=True):
    """U (m, k), s (k,) decreasing with trailing zeros, Vh (k, n); k = min(m, n)."""
    u, s, vh = [], [], []
    for m, n in shapes:
        k = min(m, n)
        u.append(torch.randn(m, k, generator=gen, dtype=torch.float64).to(dtype))
        sv = (torch.rand(k, generator=gen, dtype=torch.float64) * 4).sort(descending=True).values
        if zeros and k >= 3:
            sv[-(k // 3):] = 0  # rank-deficient: producers zero values under the rank tolerance
        s.append(sv.to(dtype))
        vh.append(torch.randn(k, n, generator=gen, dtype=torch.float64).to(dtype))
    to = lambda ts: [t.to(DEVICE) for t in ts]
    return to(u), to(s), to(vh)


def nan_views(shapes, dtype, layout):
    """Output views into larger NaN buffers; returns (views, buffers, masks of the viewed elements)."""
    views, bufs, masks = [], [], []
    for m, n in shapes:
        if layout == "row":  # padded rows: stride (n + 5, 1), offset into the buffer
            buf = torch.full((m + 3, n + 5), math.nan, dtype=dtype, device=DEVICE)
            sel = (slice(1, 1 + m), slice(2, 2 + n))
            view = buf[sel]
        elif layout == "col":  # column-major: stride (1, m + 2)
            buf = torch.full((n + 2, m + 2), math.nan, dtype=dtype, device=DEVICE)
            sel = (slice(1, 1 + n), slice(1, 1 + m))
            view = buf[sel].t()
        else:  # general strides (2, 3 * (m ...)): every other row, every third column
            buf = torch.full((2 * m + 1, 3 * n + 2), math.nan, dtype=dtype, device=DEVICE)
            sel = (slice(1, 1 + 2 * m, 2), slice(2, 2 + 3 * n, 3))
            view = buf[sel]
        mask = torch.zeros(buf.shape, dtype=torch.bool, device=DEVICE)
        mask[sel] = True
        views.append(view)
        bufs.append(buf)
        masks.append(mask)
    return views, bufs, masks


def check_margins(bufs, masks, seed):
    for i, (buf, mask) in enumerate(zip(bufs, masks)):
        assert buf[~mask].isnan().all(), f"seed {seed}: matrix {i}: a write landed outside its view"
        assert not buf[mask].isnan().any(), f"seed {seed}: matrix {i}: an element of its view was not written"


# ---------------------------------------------------------------------------------------------
# map parsing (pure Python; no triton needed)

_PARSE_CASES = ["sqrt", "log1p", "abslog", "ones", "spectral", "square", "identity", "power:0.5", "power:-2",
                "power: 0.5", "power:1.", "power:.5", "power:+.5", "power:0x1p-1", "power:0X.8P1", "power:1e-3",
                "Sqrt", "sqrt ", "", "power:", "power:0.5 ", " power:0.5", "power:1_0", "power:1e999", "power:nan",
                "power:inf", "power:1e", "power:0x", "power:abc", "pow:2"]


@pytest.mark.parametrize("name", _PARSE_CASES)
def test_parse_map_matches_cpp(name):
    """Same acceptance, value and message as C++ parse_map (reached through svs::refine on a 1x1
    weight [[2]], whose result is f(2))."""
    w = torch.full((1, 1), 2.0, dtype=torch.float64)
    cpp_err = py_err = None
    try:
        (new,), _ = torch.ops.svs.refine([w], [None], name, 1e-8, "svd")
    except ValueError as e:
        cpp_err = str(e).splitlines()[0]
    try:
        code, p = parse_map(name)
    except ValueError as e:
        py_err = str(e)
    assert py_err == cpp_err
    if py_err is None:
        f = ref_map(torch.tensor([2.0]), name)
        assert new.item() == pytest.approx(f.item(), rel=1e-15)
        # and the parsed map reaches the C++ composite as (code, power): same value
        out = torch.zeros(1, 1, dtype=torch.float64)
        one = torch.ones(1, 1, dtype=torch.float64)
        torch.ops.svs._reconstruct([one], [torch.full((1,), 2.0, dtype=torch.float64)], [one], [out], code, p)
        assert out.item() == pytest.approx(f.item(), rel=1e-15)


def test_composite_rejects_bad_codes():
    one = torch.ones(1, 1)
    for code, p in ((8, 1.0), (-1, 1.0), (3, math.inf)):
        with pytest.raises(RuntimeError, match="out of range"):
            torch.ops.svs._reconstruct([one], [torch.ones(1)], [one], [torch.empty(1, 1)], code, p)


# ---------------------------------------------------------------------------------------------
# grouped reconstruction

# Awkward shapes: 1, 31, 33, 127 (never a multiple of the tile), wide and tall, in one launch.
SHAPES = [(1, 1), (1, 33), (31, 1), (31, 33), (33, 31), (127, 20), (5, 127)]


@needs_triton
@pytest.mark.parametrize("name", MAPS)
def test_reconstruct_every_map(name, gen):
    u, s, vh = random_problem(SHAPES, gen)
    s[1] = torch.zeros_like(s[1])  # an all-zero spectrum: the output must be exactly zero
    out, bufs, masks = nan_views(SHAPES, torch.float32, "row")
    R.reconstruct(u, s, vh, out, name)
    check_margins(bufs, masks, gen.initial_seed())
    check_reconstruction(u, s, vh, out, name, gen.initial_seed())
    assert (out[1] == 0).all()


@needs_triton
def test_reconstruct_long_dimension(gen):
    """One dimension 4097 with the other tiny, in both orientations, plus a 127 x 127."""
    shapes = [(4097, 2), (3, 4097), (127, 127)]
    u, s, vh = random_problem(shapes, gen)
    out, bufs, masks = nan_views(shapes, torch.float32, "row")
    R.reconstruct(u, s, vh, out, "sqrt")
    check_margins(bufs, masks, gen.initial_seed())
    check_reconstruction(u, s, vh, out, "sqrt", gen.initial_seed())


@needs_triton
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", ["sqrt", "log1p"])  # fused map / precomputed map
def test_reconstruct_output_dtypes(out_dtype, name, gen):
    shapes = [(31, 33), (33, 17), (1, 5)]
    u, s, vh = random_problem(shapes, gen)
    out, bufs, masks = nan_views(shapes, out_dtype, "row")
    R.reconstruct(u, s, vh, out, name)
    check_margins(bufs, masks, gen.initial_seed())
    check_reconstruction(u, s, vh, out, name, gen.initial_seed())


@needs_triton
@pytest.mark.parametrize("in_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_reconstruct_operand_dtypes(in_dtype, gen):
    """float64 U/Vh compute in float64; half-precision U/Vh are widened to float32 before the dot
    (bf16 tl.dot is wrong in the interpreter, and float32 is the accuracy we promise anyway)."""
    shapes = [(33, 31), (7, 40)]
    u, s, vh = random_problem(shapes, gen, dtype=in_dtype)
    out_dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
    out, bufs, masks = nan_views(shapes, out_dtype, "row")
    R.reconstruct(u, s, vh, out, "spectral")
    check_margins(bufs, masks, gen.initial_seed())
    # the reference uses the rounded half-precision operands; compute is float32 (float64 for float64)
    check_reconstruction(u, s, vh, out, "spectral", gen.initial_seed())


@needs_triton
@pytest.mark.parametrize("layout", ["row", "col", "general"])
def test_reconstruct_layouts(layout, gen):
    """Output views of every stride class; U and Vh column-major (as LAPACK/cuSOLVER return them)
    or general-strided; margins of the NaN buffers must stay NaN."""
    shapes = [(31, 33), (33, 31), (1, 17), (20, 1)]
    u, s, vh = random_problem(shapes, gen)
    if layout == "col":
        u = [x.t().contiguous().t() for x in u]
        vh = [x.t().contiguous().t() for x in vh]
    elif layout == "general":
        u = [torch.repeat_interleave(x, 2, dim=1)[:, ::2] for x in u]  # stride (2k, 2)
        vh = [torch.repeat_interleave(x, 3, dim=0)[::3] for x in vh]
        s = [torch.repeat_interleave(x, 2)[::2] for x in s]  # stride 2
    out, bufs, masks = nan_views(shapes, torch.float32, layout)
    for name in ("sqrt", "abslog"):
        for b in bufs:
            b.fill_(math.nan)
        R.reconstruct(u, s, vh, out, name)
        check_margins(bufs, masks, gen.initial_seed())
        check_reconstruction(u, s, vh, out, name, gen.initial_seed())


@needs_triton
def test_reconstruct_mixed_dtypes_in_one_call(gen):
    shapes = [(31, 33), (17, 9), (9, 17)]
    u, s, vh = random_problem(shapes, gen)
    dtypes = [torch.float16, torch.float32, torch.bfloat16]
    out = [torch.full((m, n), math.nan, dtype=d, device=DEVICE) for (m, n), d in zip(shapes, dtypes)]
    R.reconstruct(u, s, vh, out, "power:0.5")
    check_reconstruction(u, s, vh, out, "power:0.5", gen.initial_seed())


@needs_triton
def test_reconstruct_matches_composite_op(gen):
    """Same result as the ATen composite kernel of svs::_reconstruct (the C++ semantics)."""
    u, s, vh = random_problem(SHAPES, gen)
    for name in ("sqrt", "spectral", "power:1.5"):
        ours = [torch.empty(x.shape[0], y.shape[1], device=DEVICE) for x, y in zip(u, vh)]
        theirs = [torch.empty(x.shape[0], y.shape[1]) for x, y in zip(u, vh)]
        R.reconstruct(u, s, vh, ours, name)
        torch.ops.svs._reconstruct([x.cpu() for x in u], [x.cpu() for x in s], [x.cpu() for x in vh], theirs,
                                       *parse_map(name))
        for a, b in zip(ours, theirs):
            # both float32-accurate (3xTF32 / float32 matmul), different summation orders: within 1e-5
            # of the largest entry
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@needs_triton
def test_reconstruct_registered_through_dispatcher(gen):
    """register() makes reconstruct the kernel of svs::_reconstruct for a dispatch key: here CPU
    (interpreter) for the test's duration; on a CUDA machine import registered it for CUDA. The
    map crosses the boundary parsed: (code, power)."""
    shapes = [(31, 33), (4, 9)]
    u, s, vh = random_problem(shapes, gen)
    code, power = parse_map("power:0.7")
    if DEVICE == "cuda":
        assert svs_triton.registered()
        assert torch._C._dispatch_has_kernel_for_dispatch_key("svs::_reconstruct", "CUDA")
        assert svs_kernels.backend_info()["reconstruct"] == "triton"
        out = [torch.full((m, n), math.nan, device=DEVICE) for m, n in shapes]
        torch.ops.svs._reconstruct(u, s, vh, out, code, power)
    else:
        info = svs_kernels.backend_info()
        assert info["reconstruct"] == "composite" and "not registered" in info["note"]
        lib = svs_triton.register("CPU")
        try:
            calls = []
            orig = R.reconstruct
            R.reconstruct = lambda *a, **kw: (calls.append(a[4:]), orig(*a, **kw))[1]
            try:
                out = [torch.full((m, n), math.nan) for m, n in shapes]
                torch.ops.svs._reconstruct(u, s, vh, out, code, power)
            finally:
                R.reconstruct = orig
            assert calls == [(code, power)], "the dispatcher did not call the Triton kernel with (code, power)"
        finally:
            lib._destroy()
            svs_triton._LIBS.remove(lib)
    check_reconstruction(u, s, vh, out, "power:0.7", gen.initial_seed())


@needs_triton
def test_reconstruct_errors():
    a = torch.ones(3, 2, device=DEVICE)
    s = torch.ones(2, device=DEVICE)
    b = torch.ones(2, 4, device=DEVICE)
    o = torch.empty(3, 4, device=DEVICE)
    with pytest.raises(RuntimeError, match="same length"):
        R.reconstruct([a], [s], [b], [o, o])
    with pytest.raises(ValueError, match="unknown map 'cube'"):
        R.reconstruct([a], [s], [b], [o], "cube")
    with pytest.raises(RuntimeError, match="do not fit"):
        R.reconstruct([a], [s], [b], [torch.empty(4, 3, device=DEVICE)])
    with pytest.raises(RuntimeError, match="do not fit"):
        R.reconstruct([a], [torch.ones(3, device=DEVICE)], [b], [o])
    with pytest.raises(RuntimeError, match="dtype"):
        R.reconstruct([a], [s], [b], [torch.empty(3, 4, dtype=torch.int32, device=DEVICE)])
    R.reconstruct([], [], [], [])  # nothing to do


# ---------------------------------------------------------------------------------------------
# packed sigma-map


def plan_map_table(segments, power):
    """The sigma-map table that svs::_reconstruct_plan builds for these vectors (each the s of a
    (1, k) x (k, 1) product, one chunk): a header, then a row per vector at its packed offset."""
    u = [torch.ones(1, x.numel(), dtype=x.dtype, device=x.device) for x in segments]
    vh = [torch.ones(x.numel(), 1, dtype=x.dtype, device=x.device) for x in segments]
    out = [torch.empty(1, 1, dtype=x.dtype, device=x.device) for x in segments]
    one = [32, 32, 16]
    table, launches, _ = torch.ops.svs._reconstruct_plan(u, segments, vh, out, power, one, one, [1] * 8, 1, 16, 32,
                                                         1 << 40)
    (chunk,) = [r for r in launches.tolist() if r[0] == _layout.CHUNK]
    return table[chunk[1]:chunk[1] + (1 + len(segments)) * _layout.MAP_ROW]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigma_map_packed(dtype, gen):
    """The sigma-map kernel on the table the C++ plan builds: every map, every vector at its packed
    offset, whatever its length (0, 1, a block multiple plus or minus one, several blocks)."""
    lengths = [1, 31, 0, 33, 127, 4097, 5]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    s = (torch.rand(offsets[-1], generator=gen, dtype=torch.float64) * 3).to(dtype)
    s[offsets[3]:offsets[3] + 10] = 0  # zeros map to zero
    s[offsets[1]:offsets[2]][::4] = 1e-30  # tiny values: log1p must stay accurate (Goldberg form)
    s[offsets[6]:offsets[7]] = 0  # an all-zero segment (spectral: 0/0 must give 0)
    s = s.to(DEVICE)
    segments = [s[a:b] for a, b in zip(offsets, offsets[1:])]
    out = torch.full_like(s, math.nan)
    for name in MAPS:
        code, power = parse_map(name)
        tab = plan_map_table(segments, power)
        assert tab.view(-1, _layout.MAP_ROW)[1:, 3].tolist() == offsets[:-1], "vectors packed back to back"
        SM.launch_map(common.to_device(tab, s.device), out, dtype, code, len(segments))
        for a, b in zip(offsets, offsets[1:]):
            ref = ref_map(s[a:b].cpu(), name).to(dtype).double()  # rounded like the kernel's store
            got = out[a:b].cpu().double()
            # float64 evaluation (map_eval_rtol), then one rounding to dtype: equal to the rounded
            # float64 reference up to 1 ulp of dtype (the evaluation error can flip a rounding)
            rtol = 2 * U_OUT[dtype] + map_eval_rtol(s[a:b].cpu(), name)
            err = (got - ref).abs()
            worst = (err / (rtol * ref.abs()).clamp_min(1e-300)).max().item() if b > a else 0.0
            assert (err <= rtol * ref.abs()).all(), (
                f"seed {gen.initial_seed()} map {name} segment {a}:{b}: {worst:.2f} times the bound")


# ---------------------------------------------------------------------------------------------
# precision: the staging kernel's rounding, and references that emulate it


def _rna_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest TF32 (ties away from zero), as cvt.rna.tf32.f32."""
    bits = x.float().view(torch.int32).to(torch.int64)
    return ((bits + 0x1000) & 0xFFFFE000).to(torch.int32).view(torch.float32)


@needs_triton
@pytest.mark.parametrize("mode", ["TF32", "SPLIT"])
def test_stage_rounding_and_padding(mode, gen):
    """Staging writes U * f(s) rounded as stated (TF32: rna; SPLIT: hi = rna(x), lo = rna(x - hi),
    |x - hi - lo| <= 2^-22 |x|), row-major into the padded planes, zeros in the padding."""
    m, k, rows_p, cols_p = 37, 21, 64, 32
    x = torch.randn(k, m, generator=gen).t().to(DEVICE)  # column-major source
    fs = (torch.rand(k, generator=gen) + 0.5).to(DEVICE)
    planes = 2 if mode == "SPLIT" else 1
    dst = torch.full((planes, rows_p, cols_p), math.nan, device=DEVICE)
    lo_off = rows_p * cols_p
    tab = torch.tensor([x.data_ptr(), fs.data_ptr(), dst.data_ptr(), m, k, x.stride(0), x.stride(1), rows_p,
                        cols_p, lo_off], dtype=torch.int64)
    stage.launch(common.to_device(tab, dst.device), 1, common.TL_DTYPE[torch.float32], common.TL_DTYPE[torch.float32],
                 _layout.COL_MAJOR, getattr(stage, mode), 2)
    a = x.cpu() * fs.cpu()  # float32 product, as the kernel
    got = dst.cpu()
    assert (got[:, m:, :] == 0).all() and (got[:, :, k:] == 0).all(), "padding not zero"
    hi = got[0, :m, :k]
    assert torch.equal(hi, _rna_tf32(a)), f"seed {gen.initial_seed()}: hi is not rna(x)"
    if mode == "SPLIT":
        lo = got[1, :m, :k]
        assert torch.equal(lo, _rna_tf32(a - hi)), f"seed {gen.initial_seed()}: lo is not rna(x - hi)"
        r = (a.double() - hi.double() - lo.double()).abs()
        assert (r <= 2.0**-22 * a.double().abs()).all(), f"seed {gen.initial_seed()}: split residual too large"


def _emulated(ui, fs32, vi, split: bool) -> torch.Tensor:
    """float64 value of what the tensor cores compute from the staged operands (exact products)."""
    a, b = ui.cpu().float() * fs32, vi.cpu().float()
    ha, hb = _rna_tf32(a), _rna_tf32(b)
    if not split:
        return ha.double() @ hb.double()
    la, lb = _rna_tf32(a - ha), _rna_tf32(b - hb)
    return la.double() @ hb.double() + ha.double() @ lb.double() + ha.double() @ hb.double()


@needs_triton
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reconstruct_matches_emulated_tensor_cores(out_dtype, gen):
    """The kernel equals the emulated tensor-core arithmetic (3xTF32 for float32 outputs, TF32 for
    16-bit ones) within the float32 accumulation error (3k or k terms at 2^-24 on the interpreter,
    2^-23 on a GPU) plus the rounding of the stored value; and the emulation itself meets the
    stated bound against exact float64 arithmetic (check_reconstruction)."""
    shapes = [(64, 96), (33, 70)]
    u, s, vh = random_problem(shapes, gen)
    out = [torch.full((m, n), math.nan, dtype=out_dtype, device=DEVICE) for m, n in shapes]
    R.reconstruct(u, s, vh, out, "sqrt")
    split = out_dtype == torch.float32
    u_acc = 2.0**-23 if DEVICE == "cuda" else 2.0**-24
    for i, (ui, si, vi, oi) in enumerate(zip(u, s, vh, out)):
        k = si.numel()
        fs32 = ref_map(si.cpu(), "sqrt").float()
        emu = _emulated(ui, fs32, vi, split)
        B = (ui.cpu().float() * fs32).double().abs() @ vi.cpu().double().abs()
        tol = 1.01 * (((3 * k if split else k) + 2) * u_acc + U_STORE[out_dtype])
        err = (oi.cpu().double() - emu).abs()
        assert (err <= tol * B + 1e-300).all(), (
            f"seed {gen.initial_seed()}: matrix {i} {out_dtype}: {(err / (tol * B)).max().item():.2f} of the bound")
        # the emulation, i.e. what a GPU computes, is within the stated bound of exact arithmetic
        exact = (ui.cpu().double() * fs32.double()) @ vi.cpu().double()
        rel = bound_factor(False, torch.float32, k, True) - 1.01 * U_STORE[torch.float32] if split else 2.0**-10 + 2.0**-21
        assert ((emu - exact).abs() <= rel * B).all(), f"seed {gen.initial_seed()}: emulation outside the bound"
    check_reconstruction(u, s, vh, out, "sqrt", gen.initial_seed())


# ---------------------------------------------------------------------------------------------
# aligned and remainder launches, configs


@needs_triton
def test_aligned_and_remainder_launches(gen, monkeypatch):
    """Matrices whose output is row-major, 16-byte aligned and a tile multiple go to the ALIGNED
    GEMM launch (unmasked vector stores), the others to the masked one; both in one call, both
    correct, margins untouched."""
    c = gemm.choose_config("float32", torch.tensor([64]).numpy(), torch.tensor([64]).numpy(), 1)
    bm, bn = c.block_m, c.block_n
    shapes = [(2 * bm, 3 * bn), (bm, bn), (bm + 1, bn), (3, 5)]
    u, s, vh = random_problem(shapes, gen)
    out = [torch.full((m, n), math.nan, device=DEVICE) for m, n in shapes]
    seen = []
    orig = gemm.launch
    monkeypatch.setattr(gemm, "launch", lambda tab, G, *a: (seen.append((G, a[5])), orig(tab, G, *a))[1])
    R.reconstruct(u, s, vh, out, "sqrt")
    assert sorted(seen) == [(2, False), (2, True)], seen
    check_reconstruction(u, s, vh, out, "sqrt", gen.initial_seed())


@needs_triton
def test_reconstruct_empty_inner_dimension():
    """k = 0: U (m, 0) Vh (0, n) is a zero matrix; m = 0 or n = 0 writes nothing."""
    out = [torch.full((3, 4), math.nan, device=DEVICE), torch.empty(0, 5, device=DEVICE)]
    R.reconstruct([torch.empty(3, 0, device=DEVICE), torch.empty(0, 2, device=DEVICE)],
                  [torch.empty(0, device=DEVICE), torch.ones(2, device=DEVICE)],
                  [torch.empty(0, 4, device=DEVICE), torch.ones(2, 5, device=DEVICE)], out)
    assert (out[0] == 0).all()


@needs_triton
def test_workspace_chunks(gen, monkeypatch):
    """With a workspace cap below every matrix's need, each matrix is a chunk of its own (its own
    map, stage and GEMM launches, its own workspace); results as without chunks."""
    shapes = [(33, 40), (17, 9), (40, 33)]
    u, s, vh = random_problem(shapes, gen)
    out = [torch.full((m, n), math.nan, device=DEVICE) for m, n in shapes]
    maps = []
    orig = R.launch_map
    monkeypatch.setattr(R, "WORKSPACE_BYTES", 1)
    monkeypatch.setattr(R, "launch_map", lambda tab, o, sdt, code, G: (maps.append(G), orig(tab, o, sdt, code, G))[1])
    R.reconstruct(u, s, vh, out, "log1p")
    assert maps == [1, 1, 1], maps
    check_reconstruction(u, s, vh, out, "log1p", gen.initial_seed())


def test_choose_config_rule():
    """The shape rule: no tile larger than every matrix; the largest tile that still gives every
    SM a tile (compiled configs; the interpreter always uses its one small config)."""
    import numpy as np

    if R is None:
        pytest.skip(_REASON)
    if _INTERP:
        assert gemm.choose_config("float32", np.array([4096]), np.array([4096]), 132) == gemm.INTERPRETER_CONFIG
        return
    big, small = gemm.CONFIGS["float32"][0], gemm.CONFIGS["float32"][-1]
    assert gemm.choose_config("float32", np.array([4096] * 8), np.array([4096] * 8), 132) == big
    assert gemm.choose_config("float32", np.array([16]), np.array([40]), 132) == small


@needs_cuda
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cuda_large_accuracy(out_dtype, gen):
    """GPU only: at llm-8b-p sizes (k = 3072, orthonormal factors, s over 4 decades) the stated
    elementwise bound holds and float32 outputs are within 1e-5 relative (Frobenius)."""
    m = n = 3072
    q1, _ = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    u, vh = q1.float().cuda(), q2.T.contiguous().float().cuda()
    s = torch.logspace(0, -4, n, dtype=torch.float64).float().cuda()
    out = torch.full((m, n), math.nan, device="cuda", dtype=out_dtype)
    R.reconstruct([u], [s], [vh], [out], "sqrt")
    check_reconstruction([u], [s], [vh], [out], "sqrt", gen.initial_seed())
