"""Benchmarks of svs.refine on small workloads (pytest-benchmark), and checks of the benchmark code.

Times are recorded, never asserted; every timed result is checked against the float64 reference.
Short enough for CI on 2 cores; `pytest --benchmark-disable` runs each benchmark once.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers, workloads  # noqa: E402
from benchmarks.workloads import get_workload, rotated_copy, spectrum, stylegan2_named_shapes  # noqa: E402

OPS_MISSING = peers.load_ops()
needs_ops = pytest.mark.skipif(OPS_MISSING is not None, reason=str(OPS_MISSING))

OURS_TOL = 1e-6  # float64 routes, float32 output: ~3e-8 expected
FLOAT32_TOL = 1e-4  # float32 SVD peers at kappa 100: ~1e-6 expected


@pytest.fixture(scope="module")
def ddpm_small():
    return get_workload("ddpm-cifar10-p50").subsample(24).materialize("cpu")


@pytest.fixture(scope="module")
def tiny_small():
    return get_workload("tiny-batch").subsample(300).materialize("cpu")


_REFS = {}


def _check(result, inputs, tol):
    out_w, out_b = result
    w, b = inputs
    assert len(out_w) == len(w) and len(out_b) == len(b)
    for o, x in zip(out_w, w):
        assert o.shape == x.shape and o.dtype == x.dtype
    if id(w) not in _REFS:
        _REFS[id(w)] = (w, peers.reference(w))  # keeps w alive, so the id stays unique
    err = peers.max_rel_err(out_w, _REFS[id(w)][1])
    assert err < tol, f"max rel err {err:.2e} >= {tol:.0e}"
    assert peers.max_bias_err(out_b, b) < 1e-6
    assert all((o is None) == (x is None) for o, x in zip(out_b, b))
    return err


# ---- pytest-benchmark: the operator on small workloads --------------------------------------
TIMED = [(f"svs.refine {m}", m) for m in peers.ROUTES["cpu"]] + [(peers.BASELINE, None)]


@needs_ops
@pytest.mark.parametrize("name,method", TIMED, ids=[n for n, _ in TIMED])
@pytest.mark.benchmark(group="ddpm-cifar10-p50 [24/113]")
def test_bench_ddpm_p50_subsample(benchmark, ddpm_small, name, method):
    fn = peers.refine_route(method) if method else peers.torch_svd_per_layer
    result = benchmark.pedantic(fn, args=ddpm_small, rounds=3, iterations=1, warmup_rounds=1)
    _check(result, ddpm_small, OURS_TOL if method else FLOAT32_TOL)


@needs_ops
@pytest.mark.parametrize("name,method", TIMED, ids=[n for n, _ in TIMED])
@pytest.mark.benchmark(group="tiny-batch [300/100000]")
def test_bench_tiny_batch_subsample(benchmark, tiny_small, name, method):
    fn = peers.refine_route(method) if method else peers.torch_svd_per_layer
    result = benchmark.pedantic(fn, args=tiny_small, rounds=3, iterations=1, warmup_rounds=1)
    _check(result, tiny_small, OURS_TOL if method else FLOAT32_TOL)


# ---- the peers and the reference --------------------------------------------------------------


def test_peers_time_every_method():
    """The benchmarks record and time every method= value this build has, per device."""
    import svs

    for device in ("cpu", "cuda"):
        assert peers.ROUTES[device] == tuple(svs.ops.method_names(device))
    assert [p.name for p in peers.our_routes("cpu")] == [f"svs.refine {m}" for m in svs.ops.method_names("cpu")]


def test_every_cpu_peer_matches_reference(ddpm_small):
    ran = 0
    for p in peers.peers_for("cpu"):
        if p.skip:
            assert p.name == "cupy.linalg.svd per layer" or "svs_kernels" in p.skip, p.skip
            continue
        _check(p.fn(*ddpm_small), ddpm_small, OURS_TOL if p.ours else FLOAT32_TOL)
        ran += 1
    assert ran >= 3


def test_reference_is_exact_svs():
    """The reference agrees with the construction U sqrt(s) V^T of a generated matrix, and the
    rotated copy's SVS is the same transform of the original's."""
    gen = torch.Generator().manual_seed(1)
    u = workloads._haar(1, 40, 24, gen, torch.device("cpu"))[0].double()
    v = workloads._haar(1, 24, 24, gen, torch.device("cpu"))[0].double()
    s = spectrum(24)
    w = (u * s) @ v.T
    ref = peers.reference([w.float()])[0]
    exact = (u * s.sqrt()) @ v.T
    assert torch.linalg.vector_norm(ref - exact) / torch.linalg.vector_norm(exact) < 1e-6
    bad = torch.zeros(3, 5)
    bad[0, 0] = 1.0
    assert peers.max_rel_err([bad], [torch.ones(3, 5, dtype=torch.float64)]) > 0.5


# ---- the workloads ----------------------------------------------------------------------------
def test_spectrum_recipe():
    for r in (2, 3, 4, 5, 32, 1000):
        s = spectrum(r)
        assert s[0] == 1.0 and math.isclose(s[-1].item(), 0.01) and math.isclose((s[0] / s[-1]).item(), 100.0)
        assert bool((s[1:] <= s[:-1]).all())
    assert spectrum(1).tolist() == [1.0]
    assert spectrum(100)[:4].tolist()[:3] == [1.0, 0.6, 0.4] and spectrum(100)[3] < 0.2


def test_generated_weights_have_the_recipe_spectrum():
    wl = workloads.Workload("t", "", ("a", "b", "c", "d"), ((7, 3, 3, 3), (50, 20), (1, 9), (32, 32)),
                            (True, False, False, True), quick=2)
    w, b = wl.materialize("cpu")
    w2, b2 = rotated_copy(w, b, seed=3)
    for x, y in zip(w, w2):
        m = x.reshape(x.shape[0], -1).double()
        sv = torch.linalg.svdvals(m)
        assert torch.allclose(sv, spectrum(min(m.shape)), atol=2e-6)
        assert torch.allclose(torch.linalg.svdvals(y.reshape(m.shape).double()), sv, atol=1e-12)
        assert not torch.equal(x, y) or min(m.shape) == 1
    assert b[1] is None and b[0].shape == (7,) and b2[0].shape == (7,)


def test_workload_shapes():
    ddpm = get_workload("ddpm-cifar10-p50")
    assert (len(ddpm), ddpm.n_shapes, ddpm.dims[0][0] > 0) == (113, 18, True)
    assert max(m * n for m, n in ddpm.dims) == 128 * 2304
    assert abs(ddpm.params - 8.94e6) < 0.05e6
    llm = get_workload("llm-8b-p")
    assert len(llm) == 224 and llm.n_shapes == 4 and abs(llm.params - 3.523e9) < 1e7
    tiny = get_workload("tiny-batch")
    assert len(tiny) == 100_000 and max(max(d) for d in tiny.dims) == 32 and min(min(d) for d in tiny.dims) == 1
    sd = get_workload("sd15-unet")
    assert len(sd) == 282 and (1280, 23040) in sd.dims
    # StyleGAN2: the SVS paper's Table 1 parameter counts (G with its 8-layer mapping network):
    # teachers base 30.0M and small 24.7M, compressed (70 % channel sparsity) base 5.6M.
    mapping = 8 * (512 * 512 + 512)
    for cfg, teacher, pruned in (("base", 30.0e6, 5.6e6), ("small", 24.7e6, 5.0e6)):
        c = workloads.STYLEGAN2_CONFIGS[cfg]
        full = sum(math.prod(s) for _, s in stylegan2_named_shapes(**c, keep=1.0)) + mapping
        small = sum(math.prod(s) for _, s in stylegan2_named_shapes(**c)) + mapping
        assert abs(full - teacher) < 0.1e6 and abs(small - pruned) < 0.1e6, (cfg, full, small)
        wl = get_workload(f"stylegan2-{cfg}")
        assert len(wl) == 40 and all(len(s) in (2, 4) for s in wl.shapes)
    sub = ddpm.subsample(10)
    assert sub.is_subsample and "subsample 10/113" in sub.label and len(sub) == 10


# ---- the runner, end to end -------------------------------------------------------------------
@needs_ops
def test_run_writes_table(tmp_path, capsys):
    from benchmarks import run

    rc = run.main(["--device", "cpu", "--workload", "tiny-batch,stylegan2-small", "--max-matrices", "12",
                   "--repeats", "2", "--settle-s", "0", "--no-skip", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| workload | peer | median ms |" in out and "subsample 12/100000" in out
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert data["environment"]["device"] == "cpu" and data["environment"]["command"]
    rows = data["results"]
    # the plot draws quoted speedups only: none when every row stalled (a loaded machine)
    quoted = any(r.get("speedup") for r in rows)
    plotted = quoted and importlib.util.find_spec("matplotlib") is not None  # the plot extra
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"] + [".png"] * plotted
    ours = [r for r in rows if r["ours"] and r["status"] == "ok"]
    assert ours and all(r["max_rel_err"] < OURS_TOL for r in ours)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["max_rel_err"] < FLOAT32_TOL and r["median_ms"] > 0 and len(r["times_ms"]) == 2 for r in ok)
    base = [r for r in ok if r["peer"] == peers.BASELINE]
    # the baseline against itself is 1x, unless its timings stalled on this (shared) machine
    assert len(base) == 2 and all(math.isclose(r["speedup"], 1.0) if r["speedup"] is not None
                                  else "a stall" in r["speedup_note"] for r in base)
    assert all(r["reason"] for r in rows if r["status"] != "ok")
    assert data["complete"] is True


def _timed(peer, status="ok", lo=10.0, hi=12.0, **kw):
    return dict(workload="w", peer=peer, status=status, min_ms=lo, max_ms=hi, median_ms=(lo + hi) / 2, **kw)


def test_speedups_only_between_measured_steady_rows():
    from benchmarks import run

    rows = [_timed(peers.BASELINE, lo=100, hi=110), _timed("a", lo=10, hi=12), _timed("b", lo=10, hi=25)]
    run.add_speedups(rows)
    assert math.isclose(rows[1]["speedup"], 105 / 11) and rows[1]["speedup_note"] is None
    assert rows[2]["speedup"] is None and "this peer" in rows[2]["speedup_note"]  # 25 > 2 x 10: a stall
    stalled_base = [_timed(peers.BASELINE, lo=442, hi=13257), _timed("a")]
    run.add_speedups(stalled_base)
    assert stalled_base[1]["speedup"] is None and "baseline" in stalled_base[1]["speedup_note"]
    estimated = [dict(workload="w", peer=peers.BASELINE, status="skipped", estimate_s=30.0), _timed("a")]
    run.add_speedups(estimated)
    assert estimated[1]["speedup"] is None and "only estimated" in estimated[1]["speedup_note"]
    from benchmarks import report

    assert report.fmt_speedup(estimated[1]).startswith("not quoted: baseline not measured")
    assert "≈" not in report.fmt_speedup(estimated[1])


def test_plot_draws_quoted_speedups_only(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import report

    rows = [dict(workload="w", peer="a", status="ok", speedup=None, speedup_note="baseline not measured")]
    assert report.plot(rows, [dict(label="w")], tmp_path / "p.png", "t") is None  # nothing to draw


@needs_ops
def test_run_keeps_rows_of_a_run_cut_off(tmp_path, monkeypatch):
    """The md and json are rewritten after every row: a run killed after its first workload keeps
    that workload's rows, marked incomplete."""
    from benchmarks import run

    calls = []
    real = run.run_workload

    def first_then_killed(wl, *a):
        if calls:
            raise KeyboardInterrupt  # the time limit's SIGINT, during the second workload
        calls.append(wl.name)
        real(wl, *a)

    monkeypatch.setattr(run, "run_workload", first_then_killed)
    with pytest.raises(KeyboardInterrupt):
        run.main(["--device", "cpu", "--workload", "stylegan2-small,tiny-batch", "--max-matrices", "3",
                  "--repeats", "1", "--settle-s", "0", "--peer", "refine", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    data = json.loads(json_path.read_text())
    assert data["complete"] is False and [w["name"] for w in data["workloads"]] == ["stylegan2-small"]
    assert {r["status"] for r in data["results"]} == {"ok"} and len(data["results"]) >= 2
    assert "INCOMPLETE" in next(tmp_path.glob("*.md")).read_text()
    assert not list(tmp_path.glob("*.png"))  # the plot is drawn once a run is complete


def test_dry_run_times_nothing_and_needs_no_gpu(tmp_path, capsys):
    from benchmarks import run

    assert run.main(["--device", "cuda", "--dry-run", "--workload", "ddpm-cifar10-p50,llm-8b-p",
                     "--out", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("*dry-run.json")).read_text())
    assert data["complete"] and {r["status"] for r in data["results"]} == {"dry-run"}
    assert [w["matrices"] for w in data["workloads"]] == [113, 224]
    assert "DRY RUN" in capsys.readouterr().out


def test_default_output_is_untracked(tmp_path):
    from benchmarks import run

    args = run.parse_args(["--device", "cpu"])
    assert args.out == run.ADHOC_DIR and "results" != args.out.parent.name
    ignored = (ROOT / "benchmarks" / ".gitignore").read_text().split()
    assert ".cache/" in ignored and args.out.relative_to(ROOT / "benchmarks").parts[0] == ".cache"


# ---- low-precision (bf16) workloads ------------------------------------------------------------
BF16_U = 2.0 ** -8  # bfloat16 unit roundoff (8 significant bits): ||fl(X) - X||_F <= u ||X||_F
# A bf16 output of an exact SVS is off by its rounding alone (<= u); a float32 SVD adds ~1e-6 at kappa
# 100, and the float64 routes ~1e-15: 1e-4 covers both with room, far below u.
BF16_TOL = BF16_U + 1e-4


def _toy(dtype=torch.float32):
    wl = workloads.Workload("toy", "", ("a", "b", "c", "d"), ((6, 2, 3, 3), (40, 24), (24, 40), (40, 24)),
                            (True, False, False, True), quick=2)
    return wl if dtype == torch.float32 else wl.variant(dtype)


def test_bf16_variants_exist_with_the_twin_shapes():
    block = get_workload("llm-8b-p-block-bf16")
    assert block.dtype == torch.bfloat16 and block.low_precision and block.goal == (2.0, 1.05)
    assert block.dims == [(3072, 3072), (1024, 3072), (1024, 3072), (3072, 3072), (9216, 3072), (9216, 3072),
                          (3072, 9216)]
    assert [n.split(".")[-2] for n in block.names] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                      "up_proj", "down_proj"]
    assert block.subsample(block.quick) is block  # --quick keeps every matrix
    twin = get_workload("llm-8b-p-block")
    assert twin.dtype == torch.float32 and twin.shapes == block.shapes and not twin.low_precision
    assert twin.shapes == get_workload("llm-8b-p").shapes[:7]
    sd = get_workload("sd15-unet-bf16")
    assert sd.dtype == torch.bfloat16 and sd.shapes == get_workload("sd15-unet").shapes
    assert sd.has_bias == get_workload("sd15-unet").has_bias and sd.subsample(sd.quick) is sd
    assert sd.nbytes() * 2 == get_workload("sd15-unet").nbytes()


def test_bf16_variant_is_the_rounded_float32_twin():
    w32, b32 = _toy().materialize("cpu")
    w16, b16 = _toy(torch.bfloat16).materialize("cpu")
    assert all(x.dtype == torch.bfloat16 for x in w16 + [b for b in b16 if b is not None])
    assert all(torch.equal(x.to(torch.bfloat16), y) for x, y in zip(w32, w16))
    assert all((x is None and y is None) or torch.equal(x.to(torch.bfloat16), y) for x, y in zip(b32, b16))
    rw, rb = rotated_copy(w16, b16, seed=2)  # the signs are applied in bf16: same dtype, same spectrum
    for x, y in zip(w16, rw):
        assert y.dtype == torch.bfloat16
        m = (x.shape[0], -1)
        assert torch.allclose(torch.linalg.svdvals(y.reshape(m).double()), torch.linalg.svdvals(x.reshape(m).double()),
                              rtol=0, atol=1e-12)


def test_reference_upcasts_bf16_exactly():
    w16, _ = _toy(torch.bfloat16).materialize("cpu")
    exact = [w.double() for w in w16]  # bf16 -> float64 is exact
    assert all(torch.equal(w.double().to(torch.bfloat16), w) for w in w16)
    ref16, ref64 = peers.reference(w16), peers.reference(exact)
    assert all(torch.equal(a, b) for a, b in zip(ref16, ref64))
    assert peers.max_rel_err(w16, [w.reshape(w.shape[0], -1) for w in exact]) == 0.0
    assert peers.compute_dtype(torch.bfloat16) == peers.compute_dtype(torch.float16) == torch.float32
    assert peers.compute_dtype(torch.float64) == torch.float64


def test_every_cpu_peer_returns_bf16_for_bf16():
    inputs = _toy(torch.bfloat16).materialize("cpu")
    refs = peers.reference(inputs[0])
    ran = 0
    for p in peers.peers_for("cpu"):
        if p.skip:
            continue
        out_w, out_b = p.fn(*inputs)
        assert [o.dtype for o in out_w] == [torch.bfloat16] * 4, p.name
        assert [o.shape for o in out_w] == [w.shape for w in inputs[0]], p.name
        assert [None if o is None else o.dtype for o in out_b] == [torch.bfloat16, None, None, torch.bfloat16]
        err = peers.max_rel_err(out_w, refs)
        assert err < BF16_TOL, (p.name, err)
        assert peers.max_bias_err(out_b, inputs[1]) < BF16_TOL, p.name
        ran += 1
    assert ran >= 3


def test_error_ratio_column_and_goal_line():
    from benchmarks import report, run

    def rows_for(wl, auto_ms, auto_err):
        return [_timed(peers.BASELINE, lo=100, hi=110, max_rel_err=2e-3) | dict(workload=wl),
                _timed("svs.refine auto", lo=auto_ms, hi=auto_ms, max_rel_err=auto_err) | dict(workload=wl)]

    env = dict(device="cpu", device_name="x", date="d", command="c", python="3", torch="t", torch_threads=2,
               cpu_count=2, thread_env={})
    settings = dict(warmup=1, repeats=1, flush_mib=1, max_run_s=60)
    old = [dict(label="w", matrices=1, params=1, shapes=1, largest="1x1", subsample=False, dtype="float32")]
    rows = rows_for("w", 50, 1e-3)
    run.add_speedups(rows)
    assert math.isclose(rows[1]["err_ratio"], 0.5) and math.isclose(rows[0]["err_ratio"], 1.0)
    text = report.markdown(env, old, rows, settings)
    assert "err / per-layer" not in text and "goal" not in text  # float32 tables keep their columns
    new = old + [dict(old[0], label="b-bf16", dtype="bfloat16", goal=(2.0, 1.05))]
    rows += rows_for("b-bf16", 50, 2.2e-3)
    run.add_speedups(rows)
    text = report.markdown(env, new, rows, settings)
    header = next(line for line in text.splitlines() if line.startswith("| workload | peer"))
    assert "| max rel err | err / per-layer err | note |" in header
    assert "| b-bf16 | svs.refine auto | 50.0 | 50.0-50.0 | 2.10x | 2.2e-03 | 1.100x |" in text
    (goal,) = [line for line in text.splitlines() if line.startswith("- goal")]
    assert "b-bf16" in goal and "**missed**: error ratio 1.100x > 1.05x" in goal and "speedup" not in goal.split(":")[-1]
    rows[-1]["max_rel_err"] = 2.1e-3
    run.add_speedups(rows)
    assert "**met**" in report.markdown(env, new, rows, settings)


def test_run_times_every_peer_of_a_bf16_workload(tmp_path, monkeypatch):
    """bf16 workloads: every available peer timed despite --max-run-s, error over all matrices."""
    from benchmarks import run

    monkeypatch.setitem(workloads.WORKLOADS, "toy-bf16", lambda: _toy(torch.bfloat16))
    assert run.main(["--device", "cpu", "--workload", "toy-bf16", "--quick", "--repeats", "1", "--settle-s", "0",
                     "--max-run-s", "1e-9", "--copies", "2", "--out", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    (wl,) = data["workloads"]
    assert wl["error_over"] == "all" and wl["dtype"] == "bfloat16" and wl["matrices"] == 4
    rows = data["results"]
    runnable = [p.name for p in peers.peers_for("cpu") if not p.skip]
    assert [r["peer"] for r in rows if r["status"] == "ok"] == runnable
    for r in rows:
        if r["status"] == "ok":
            assert r["out_dtype"] == "bfloat16" and r["max_rel_err"] < BF16_TOL and r["err_ratio"] is not None
    assert "err / per-layer err" in next(tmp_path.glob("*.md")).read_text()


def test_named_only_workloads_join_on_request(capsys):
    from benchmarks import run

    assert run.main(["--list", "--quick"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-batch" in listed and "llm-8b-p-block" not in listed and "sd15-unet-bf16" not in listed
    assert run.main(["--list", "--quick", "--with", "llm-8b-p-block-bf16,sd15-unet-bf16"]) == 0
    listed = capsys.readouterr().out
    names = {tuple(line.split()[:2]) for line in listed.splitlines()}
    assert {("tiny-batch", "float32"), ("llm-8b-p-block-bf16", "bfloat16"), ("sd15-unet-bf16", "bfloat16")} <= names
    with pytest.raises(SystemExit):
        run.parse_args(["--workload", "tiny-batch", "--with", "sd15-unet-bf16"])
