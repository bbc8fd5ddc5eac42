"""Triton kernels (svs_kernels.triton): sigma-map, grouped reconstruction, bias rule.

On a CPU-only machine these run under the Triton interpreter on CPU tensors; TRITON_INTERPRET=1 must
be set before triton is first imported (tests/conftest.py does so when CUDA is unavailable). With
CUDA they run compiled on the GPU. Every test draws fresh random inputs; the seed is in the
assertion messages.

Tolerances, from the standard dot-product error bound: with B = |U| diag(f(s)) |Vh| (float64),
  |out - ref| <= 2 * ((k + 2) * u_c + u_out) * B          elementwise,
where u_c is the unit roundoff of the products/accumulation (float32 2^-24 under the interpreter's
numpy matmul and the GPU's "ieee"; 2^-21 for the GPU's tf32x3, whose hi/lo split drops terms of
~2^-22 relative per product), (k + 2) covers k accumulations plus the rounding of f(s) and of
U * f(s), u_out the rounding of the stored value (2^-24 / 2^-11 / 2^-8 for float32 / float16 /
bfloat16; 2^-53 for float64), and the factor 2 is margin. float64 compute uses u_c = 2^-53.
"""
import math
import os

import pytest
import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs.*)
from svs_kernels import triton as svs_triton
from svs_kernels.triton import parse_map

if svs_triton.available():
    from svs_kernels.triton import kernels as K

    _INTERP = K.interpreting()
else:
    K = None
    _INTERP = False

_REASON = None
if K is None:
    _REASON = f"triton is not importable: {svs_triton.import_error()!r}"
elif not torch.cuda.is_available() and not _INTERP:
    _REASON = "no CUDA and triton was imported without TRITON_INTERPRET=1 (set it before triton is imported)"
needs_triton = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or _INTERP, reason="needs CUDA, compiled Triton")

DEVICE = "cpu" if (_INTERP or not torch.cuda.is_available()) else "cuda"
MAPS = ["sqrt", "log1p", "abslog", "power:0.3", "power:-0.5", "ones", "spectral", "square", "identity"]
U_OUT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float64: 2.0**-53}


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator().manual_seed(seed)
    return g


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


def check_reconstruction(u, s, vh, out, name, seed, u_c=None):
    """Elementwise bound above, and ||out - ref||_F <= 1e-5 ||ref||_F for float32 outputs."""
    for i, (ui, si, vi, oi) in enumerate(zip(u, s, vh, out)):
        f = ref_map(si.cpu(), name)
        U, V = ui.cpu().double(), vi.cpu().double()
        ref = (U * f) @ V
        bound = (U.abs() * f.abs()) @ V.abs()
        k = si.numel()
        if u_c is not None:
            compute_u = u_c
        elif torch.float64 in (ui.dtype, vi.dtype):
            compute_u = 2.0**-53
        else:  # GPU: tf32x3 (see the module docstring); interpreter: numpy float32 matmul
            compute_u = 2.0**-21 if oi.is_cuda else 2.0**-24
        tol = 2 * ((k + 2) * compute_u + U_OUT[oi.dtype])
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
    """Same acceptance, value and message as C++ parse_map (reached through the composite op)."""
    one = torch.ones(1, 1, dtype=torch.float64)
    out = torch.zeros(1, 1, dtype=torch.float64)
    cpp_err = py_err = None
    try:
        torch.ops.svs._reconstruct([one], [torch.full((1,), 2.0, dtype=torch.float64)], [one], [out], name)
    except RuntimeError as e:
        cpp_err = str(e).splitlines()[0]
    try:
        code, p = parse_map(name)
    except RuntimeError as e:
        py_err = str(e)
    assert py_err == cpp_err
    if py_err is None:  # same f(2) as the C++ composite
        f = ref_map(torch.tensor([2.0]), name)
        assert out.item() == pytest.approx(f.item(), rel=1e-15)


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
    K.reconstruct(u, s, vh, out, name)
    check_margins(bufs, masks, gen.initial_seed())
    check_reconstruction(u, s, vh, out, name, gen.initial_seed())
    assert (out[1] == 0).all()


@needs_triton
def test_reconstruct_long_dimension(gen):
    """One dimension 4097 with the other tiny, in both orientations, plus a 127 x 127."""
    shapes = [(4097, 2), (3, 4097), (127, 127)]
    u, s, vh = random_problem(shapes, gen)
    out, bufs, masks = nan_views(shapes, torch.float32, "row")
    K.reconstruct(u, s, vh, out, "sqrt")
    check_margins(bufs, masks, gen.initial_seed())
    check_reconstruction(u, s, vh, out, "sqrt", gen.initial_seed())


@needs_triton
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", ["sqrt", "log1p"])  # fused map / precomputed map
def test_reconstruct_output_dtypes(out_dtype, name, gen):
    shapes = [(31, 33), (33, 17), (1, 5)]
    u, s, vh = random_problem(shapes, gen)
    out, bufs, masks = nan_views(shapes, out_dtype, "row")
    K.reconstruct(u, s, vh, out, name)
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
    K.reconstruct(u, s, vh, out, "spectral")
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
        K.reconstruct(u, s, vh, out, name)
        check_margins(bufs, masks, gen.initial_seed())
        check_reconstruction(u, s, vh, out, name, gen.initial_seed())


@needs_triton
def test_reconstruct_mixed_dtypes_in_one_call(gen):
    shapes = [(31, 33), (17, 9), (9, 17)]
    u, s, vh = random_problem(shapes, gen)
    dtypes = [torch.float16, torch.float32, torch.bfloat16]
    out = [torch.full((m, n), math.nan, dtype=d, device=DEVICE) for (m, n), d in zip(shapes, dtypes)]
    K.reconstruct(u, s, vh, out, "power:0.5")
    check_reconstruction(u, s, vh, out, "power:0.5", gen.initial_seed())


@needs_triton
def test_reconstruct_matches_composite_op(gen):
    """Same result as the ATen composite kernel of svs::_reconstruct (the C++ semantics)."""
    u, s, vh = random_problem(SHAPES, gen)
    for name in ("sqrt", "spectral", "power:1.5"):
        ours = [torch.empty(x.shape[0], y.shape[1], device=DEVICE) for x, y in zip(u, vh)]
        theirs = [torch.empty(x.shape[0], y.shape[1]) for x, y in zip(u, vh)]
        K.reconstruct(u, s, vh, ours, name)
        torch.ops.svs._reconstruct([x.cpu() for x in u], [x.cpu() for x in s], [x.cpu() for x in vh], theirs, name)
        for a, b in zip(ours, theirs):
            # both float32 (GPU: tf32x3), different summation orders: within 1e-5 of the largest entry
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@needs_triton
def test_reconstruct_registered_through_dispatcher(gen):
    """register() makes reconstruct the kernel of svs::_reconstruct for a dispatch key: here CPU
    (interpreter) for the test's duration; on a CUDA machine import registered it for CUDA."""
    shapes = [(31, 33), (4, 9)]
    u, s, vh = random_problem(shapes, gen)
    if DEVICE == "cuda":
        assert svs_triton.registered()
        assert torch._C._dispatch_has_kernel_for_dispatch_key("svs::_reconstruct", "CUDA")
        out = [torch.full((m, n), math.nan, device=DEVICE) for m, n in shapes]
        torch.ops.svs._reconstruct(u, s, vh, out, "log1p")
    else:
        lib = K.register("CPU")
        try:
            calls = []
            orig = K.reconstruct
            K.reconstruct = lambda *a, **kw: (calls.append(1), orig(*a, **kw))[1]
            try:
                out = [torch.full((m, n), math.nan) for m, n in shapes]
                torch.ops.svs._reconstruct(u, s, vh, out, "log1p")
            finally:
                K.reconstruct = orig
            assert calls, "the dispatcher did not call the Triton kernel"
        finally:
            lib._destroy()
            K._LIBS.remove(lib)
    check_reconstruction(u, s, vh, out, "log1p", gen.initial_seed())


@needs_triton
def test_reconstruct_errors():
    a = torch.ones(3, 2, device=DEVICE)
    s = torch.ones(2, device=DEVICE)
    b = torch.ones(2, 4, device=DEVICE)
    o = torch.empty(3, 4, device=DEVICE)
    with pytest.raises(RuntimeError, match="same length"):
        K.reconstruct([a], [s], [b], [o, o])
    with pytest.raises(RuntimeError, match="unknown map 'cube'"):
        K.reconstruct([a], [s], [b], [o], "cube")
    with pytest.raises(RuntimeError, match="do not fit"):
        K.reconstruct([a], [s], [b], [torch.empty(4, 3, device=DEVICE)])
    with pytest.raises(RuntimeError, match="do not fit"):
        K.reconstruct([a], [torch.ones(3, device=DEVICE)], [b], [o])
    with pytest.raises(RuntimeError, match="dtype"):
        K.reconstruct([a], [s], [b], [torch.empty(3, 4, dtype=torch.int32, device=DEVICE)])
    K.reconstruct([], [], [], [])  # nothing to do


# ---------------------------------------------------------------------------------------------
# packed sigma-map


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigma_map_packed(dtype, gen):
    lengths = [1, 31, 0, 33, 127, 4097, 5]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    s = (torch.rand(offsets[-1], generator=gen, dtype=torch.float64) * 3).to(dtype)
    s[offsets[3]:offsets[3] + 10] = 0  # zeros map to zero
    s[offsets[1]:offsets[2]][::4] = 1e-30  # tiny values: log1p must stay accurate (Goldberg form)
    s[offsets[6]:offsets[7]] = 0  # an all-zero segment (spectral: 0/0 must give 0)
    s = s.to(DEVICE)
    out = torch.full_like(s, math.nan)
    for name in MAPS:
        K.sigma_map(s, torch.tensor(offsets), name, out=out)
        for a, b in zip(offsets, offsets[1:]):
            ref = ref_map(s[a:b].cpu(), name).to(dtype).double()  # rounded like the kernel's store
            got = out[a:b].cpu().double()
            # float64 evaluation then one rounding to dtype: equal to the rounded float64 reference
            # up to 1 ulp (an evaluation error of a few float64 ulps can flip a rounding)
            torch.testing.assert_close(got, ref, rtol=2 * U_OUT[dtype] + 1e-15, atol=0,
                                       msg=lambda m: f"seed {gen.initial_seed()} map {name} segment {a}:{b}: {m}")


@needs_triton
def test_sigma_map_errors():
    s = torch.ones(4, device=DEVICE)
    with pytest.raises(RuntimeError, match="offsets"):
        K.sigma_map(s, torch.tensor([0, 5]))
    with pytest.raises(RuntimeError, match="needs a finite number"):
        K.sigma_map(s, torch.tensor([0, 4]), "power:x")


# ---------------------------------------------------------------------------------------------
# bias rule


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_scale_biases(dtype, gen):
    sizes = [1, 31, 33, 127, 4097, 8]
    biases = [(torch.randn(n, generator=gen, dtype=torch.float64) * 2).to(dtype).to(DEVICE) for n in sizes]
    biases[-1] = torch.zeros(8, dtype=dtype, device=DEVICE)  # a zero bias stays zero
    big = torch.randn(3 * 33, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)
    biases[2] = big[::3]  # strided input
    eps = 1e-8
    bufs = [torch.full((n + 2,), math.nan, dtype=dtype, device=DEVICE) for n in sizes]
    outs = [b[1:-1] for b in bufs]
    K.scale_biases(biases, eps, out=outs)
    for i, (b, o, buf) in enumerate(zip(biases, outs, bufs)):
        b64 = b.cpu().double()
        ref = (b64 / (b64.norm() + eps).sqrt()).to(dtype).double()  # the C++ scale_bias
        # float64 all the way, then one rounding to dtype: at most 1 ulp of dtype from the C++
        # result, plus the float64 evaluation differences (blocked sum of squares vs torch's norm:
        # worst case n * 2^-53 relative in ||b||^2 for n = 4097, quartered by the two square roots)
        torch.testing.assert_close(o.cpu().double(), ref, rtol=2 * U_OUT[dtype] + 4097 * 2.0**-53 / 4, atol=0,
                                   msg=lambda m: f"seed {gen.initial_seed()} bias {i}: {m}")
        assert buf[0].isnan() and buf[-1].isnan(), f"bias {i}: write outside the view"
    assert (outs[-1] == 0).all()
    # functional form and in place
    new = K.scale_biases(biases, eps)
    for a, b in zip(new, outs):
        assert torch.equal(a, b)
    inplace = [b.clone() for b in biases]
    K.scale_biases(inplace, eps, out=inplace)
    for a, b in zip(inplace, outs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# autotuning record, GPU compilation without a GPU, GPU accuracy


@needs_triton
def test_autotune_results_reported(gen):
    u, s, vh = random_problem([(9, 9)], gen)
    K.reconstruct(u, s, vh, [torch.empty(9, 9, device=DEVICE)])
    res = K.autotune_results()["_grouped_reconstruct_kernel"]
    assert res and all({"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"} <= set(e["config"]) for e in res)


def _has_cuda_backend() -> bool:
    try:
        import triton

        return "nvidia" in triton.backends.backends
    except Exception:
        return False


# Runs in a fresh process without TRITON_INTERPRET (the interpreter replaces triton.jit, so nothing
# can be compiled in this one). Needs no GPU: triton compiles for a given target with its own ptxas.
_AOT_SCRIPT = r"""
import torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import svs_kernels
from svs_kernels.triton import kernels as K

target = GPUTarget("cuda", 90, 32)
fn = K._grouped_reconstruct_kernel
while not isinstance(fn, triton.runtime.jit.JITFunction):
    fn = fn.fn
base = {"tab_ptr": "*i64", "G": "i32", "M_DIV": "i32", "N_DIV": "i32", "K_DIV": "i32",
        "KEY_M": "i32", "KEY_N": "i32", "KEY_K": "i32", "KEY_W": "i32"}
variants = [  # (constexprs, num_warps, an instruction the PTX must contain)
    (dict(U_DT=tl.float32, S_DT=tl.float32, VH_DT=tl.float32, OUT_DT=tl.float32, COMPUTE_DT=tl.float32, MAP=0,
          U_LAYOUT=1, VH_LAYOUT=1, OUT_LAYOUT=1, S_CONTIG=True, ALIGNED=True, PRECISION="tf32x3",
          BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, PROGRAMS_PER_SM=1, EVEN_M=True, EVEN_N=True, EVEN_K=True,
          M_VEC=16, N_VEC=16, K_VEC=16), 8, "wgmma"),
    (dict(U_DT=tl.float32, S_DT=tl.float64, VH_DT=tl.bfloat16, OUT_DT=tl.bfloat16, COMPUTE_DT=tl.float32, MAP=6,
          U_LAYOUT=2, VH_LAYOUT=0, OUT_LAYOUT=0, S_CONTIG=False, ALIGNED=False, PRECISION="ieee",
          BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, GROUP_M=4, PROGRAMS_PER_SM=2, EVEN_M=False, EVEN_N=False, EVEN_K=False,
          M_VEC=1, N_VEC=2, K_VEC=1), 4, "fma.rn.f32"),
    (dict(U_DT=tl.float64, S_DT=tl.float64, VH_DT=tl.float64, OUT_DT=tl.float16, COMPUTE_DT=tl.float64, MAP=7,
          U_LAYOUT=1, VH_LAYOUT=1, OUT_LAYOUT=1, S_CONTIG=True, ALIGNED=True, PRECISION="ieee",
          BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, PROGRAMS_PER_SM=2, EVEN_M=False, EVEN_N=True, EVEN_K=True,
          M_VEC=4, N_VEC=16, K_VEC=16), 4, "mma.sync"),
]
for const, warps, instr in variants:
    sig = dict(base, **{k: "constexpr" for k in const})
    c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=target,
                       options=dict(num_warps=warps, num_stages=3, enable_fp_fusion=True))
    assert instr in c.asm["ptx"], (instr, const)
    assert c.asm.get("cubin"), "no cubin"
map_sig = {"tab_ptr": "*i64", "out_ptr": "*fp32", "S_DT": "constexpr", "MAP": "constexpr", "BLOCK": "constexpr"}
for code in range(8):
    c = triton.compile(ASTSource(fn=K._sigma_map_kernel, signature=map_sig,
                                 constexprs=dict(S_DT=tl.bfloat16, MAP=code, BLOCK=256)),
                       target=target, options=dict(enable_fp_fusion=True))
    # float32 approximations (lg2/ex2/sqrt/div .approx.f32) would cost 1e-7..1e-6; libdevice's float64
    # log/exp seed with rcp.approx.ftz.f64 and refine to <= 1 ulp, which is fine.
    bad = [op for op in ("lg2.approx", "ex2.approx", "sqrt.approx", "div.approx", "approx.f32", "approx.ftz.f32")
           if op in c.asm["ptx"]]
    assert not bad, ("float64 map evaluation must not use float32 approximations", code, bad)
bias_sig = {"tab_ptr": "*i64", "IN_DT": "constexpr", "OUT_DT": "constexpr", "BLOCK": "constexpr"}
for i, o in ((tl.bfloat16, tl.float32), (tl.float32, tl.float16)):
    triton.compile(ASTSource(fn=K._bias_kernel, signature=bias_sig, constexprs=dict(IN_DT=i, OUT_DT=o, BLOCK=1024)),
                   target=target, options=dict(enable_fp_fusion=True))
print("ok")
"""


@needs_triton
@pytest.mark.skipif(not _has_cuda_backend(), reason="triton's NVIDIA backend is not available")
def test_kernels_compile_for_sm90(tmp_path):
    """Ahead-of-time compilation for an H100 (sm_90): catches what the interpreter does not check
    (dtype rules of tl.sqrt_rn, dot precisions, layouts) and checks tensor cores are used."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # really compile, in a throwaway cache
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]


@needs_cuda
@pytest.mark.parametrize("precision", ["tf32x3", "ieee"])
def test_cuda_large_accuracy(precision, gen):
    """GPU only: 1e-5 relative (Frobenius) at llm-8b-p sizes, k = 3072, orthonormal factors."""
    m, n = 3072, 3072
    q1, _ = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -4, n, dtype=torch.float64)
    u, vh, s32 = q1.float().cuda(), q2.T.float().cuda(), s.float().cuda()
    out = torch.full((m, n), math.nan, device="cuda")
    K.reconstruct([u], [s32], [vh], [out], "sqrt", input_precision=precision)
    ref = (u.double() * s32.double().sqrt()) @ vh.double()
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, f"seed {gen.initial_seed()}: {precision} relative error {rel:.2e}"
