"""svs.refine_model: selection, the report, all-or-nothing (on a failed certificate too), on CUDA as
on the CPU. The ddpm preset on the pruned DDPM against the authors' rules needs the experiments'
pruning: tests/experiments/test_pruning.py."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import svs
from tests.csrc.test_cuda import CUDA_TOL, DEVICE, requires_cuda
from tests.models import assert_inf_weight_refused
from tests.reference import TOL, assert_matches, reference_refine

def test_dry_run_changes_nothing_and_reports_spectra():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    before = [p.detach().clone() for p in model.parameters()]
    report = svs.refine_model(model, dry_run=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    s = torch.linalg.svdvals(before[0].double())
    assert report.weights[0].before_max == pytest.approx(float(s[0]), rel=1e-12)
    assert report.weights[0].after_max is None and "would refine 2 weights" in str(report)


def test_report_after_spectra_are_the_mapped_spectra():
    model = nn.Sequential(nn.Linear(20, 10))
    s = torch.linalg.svdvals(model[0].weight.detach().double())
    report = svs.refine_model(model, map="power:0.25")
    rec = report.weights[0]
    assert rec.after_max == pytest.approx(float(s[0] ** 0.25), rel=1e-6)
    assert rec.after_min == pytest.approx(float(s[-1] ** 0.25), rel=1e-6)
    table = str(report)
    assert "0.weight" in table and "refined 1 weight (1 shape) and 1 bias" in table
    assert report.to_dict()["totals"]["params_refined"] == 210


def test_report_comes_from_the_refinement_itself(monkeypatch):
    """The default report costs no decomposition beyond the refinement's own: no svdvals pass runs
    (it would raise here), before = the operator's spectra (float64 svdvals of the weights, to the
    Gram route's accuracy ~n * eps64 * kappa, far under 1e-9 here), after = the map applied to them
    (= svdvals of the new float64 weights), and the route column names the route each matrix took."""
    import svs.engine

    def no_decomposition(*args, **kwargs):
        raise AssertionError("the report decomposed the weights again")

    monkeypatch.setattr(svs.engine, "singular_values", no_decomposition)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 20)).double()
    with torch.no_grad():
        model[1].weight[:, :10] = 0  # rank 10: "auto" redoes it with the SVD route
    before = [torch.linalg.svdvals(m.weight.detach()) for m in model]
    report = svs.refine_model(model, map="log1p")
    after = [torch.linalg.svdvals(m.weight.detach()) for m in model]
    for rec, b, a in zip(report.weights, before, after):
        assert rec.before_max == pytest.approx(float(b[0]), rel=1e-9)
        assert rec.after_max == pytest.approx(float(a[0]), rel=1e-9)
    assert report.weights[0].before_min == pytest.approx(float(before[0][-1]), rel=1e-9)
    assert report.weights[1].before_min == 0.0 and report.weights[1].after_min == 0.0  # past the rank
    assert [r.route for r in report.weights] == ["aten:gram", "aten:svd"]


@pytest.mark.parametrize("stats", [True, False])
def test_decompositions_run_on_the_callers_thread(monkeypatch, stats):
    """Outside the CLI, never in svs.interrupt's worker thread: a second thread running LAPACK
    keeps a second OpenMP team alive, and every later LAPACK call of the process (the user's own
    too) ran ~7x slower (svs.interrupt). Inside svs.interrupt.own_process (the CLI), in the worker."""
    import threading

    import svs.engine
    import svs.ops

    threads = []
    for name in ("refine", "refine_with_spectra"):
        real = getattr(svs.ops, name)
        monkeypatch.setattr(svs.ops, name, lambda *a, _real=real, **k: (threads.append(threading.current_thread()), _real(*a, **k))[1])
    real_svdvals = torch.linalg.svdvals
    monkeypatch.setattr(torch.linalg, "svdvals", lambda *a, **k: (threads.append(threading.current_thread()), real_svdvals(*a, **k))[1])
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    svs.refine_model(model, stats=stats)
    svs.refine_model(model, dry_run=True)
    assert threads and all(t is threading.main_thread() for t in threads)
    threads.clear()
    from svs.interrupt import own_process

    with own_process():
        svs.refine_model(model, stats=stats)
    assert threads and all(t is not threading.main_thread() for t in threads)


def test_failure_names_the_parameter_and_changes_nothing():
    """A NaN/Inf weight: one RefineError naming it, and no parameter written (the GroupNorm of the
    ddpm preset not reset either); on the pruned DDPM: tests/experiments/test_pruning.py."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    assert_inf_weight_refused(model, "2.weight", "ddpm")


def test_progress_mode_gives_the_same_result():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4))
    b = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4))
    b.load_state_dict(a.state_dict())
    svs.refine_model(a)
    svs.refine_model(b, progress=True)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_edge_tensors_are_skipped_and_reported():
    torch.manual_seed(0)
    state = {
        "a.weight": torch.randn(4, 3), "a.bias": torch.randn(4),
        "b.weight": torch.randn(5, 2), "b.bias": torch.arange(5),           # integer bias
        "c.weight": torch.zeros(0, 3), "c.bias": torch.zeros(0),            # empty layer
        "d.weight": torch.randint(0, 3, (3, 3)), "d.bias": torch.randn(3),  # integer weight
        "steps": torch.tensor(7), "meta": "kept as is",
    }
    new, report = svs.refine_state_dict(state)
    reasons = {r.name: r.reason for r in report.skipped}
    assert reasons == {
        "b.bias": "dtype torch.int64 is not floating point",
        "b.weight": "its bias is skipped (dtype torch.int64 is not floating point)",
        "c.weight": "empty tensor", "c.bias": "empty tensor",
        "d.weight": "dtype torch.int64 is not floating point", "d.bias": "its weight is skipped",
    }
    for name in reasons:
        assert new[name] is state[name]
    assert [r.name for r in report.weights] == ["a.weight"] and new["meta"] == "kept as is"
    assert_matches(new["a.weight"], reference_refine(state["a.weight"]))
    assert report.to_dict()["totals"]["skipped"] == 6 and "skipped 6" in str(report)
    with pytest.raises(ValueError, match=r"selects no weight among 2 tensors \(2 skipped"):
        svs.refine_state_dict({"x.weight": torch.zeros(0, 2), "x.bias": torch.zeros(0)})


def test_parameters_on_the_meta_device_are_named():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"parameter '0\.weight' is on the meta device"):
        svs.refine_model(model)
    state = {"a.weight": torch.randn(3, 3), "b.weight": torch.empty(3, 3, device="meta")}
    with pytest.raises(ValueError, match=r"parameter 'b\.weight' is on the meta device"):
        svs.refine_state_dict(state)
    svs.refine_state_dict(state, exclude="^b")  # a meta tensor the selection leaves alone is no obstacle


def test_meta_parameters_of_an_empty_or_offloaded_transformers_model_are_named(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from accelerate import init_empty_weights

    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=32)
    with init_empty_weights():
        empty = transformers.LlamaForCausalLM(config)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    on_disk = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
               "model.rotary_emb": "cpu", "lm_head": "cpu"}
    offloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", device_map=on_disk,
                                                              offload_folder=tmp_path / "offload")
    for model, first in ((empty, 0), (offloaded, 1)):
        with pytest.raises(ValueError, match=rf"parameter 'model\.layers\.{first}\.self_attn\.q_proj\.weight' is on the meta"):
            svs.refine_model(model, preset="transformer")


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks a CPU-only torch")
def test_cuda_device_on_a_cpu_only_torch_is_one_line(tmp_path, capsys):
    from svs.cli import main
    from svs.model import check_device

    with pytest.raises(ValueError, match="built without CUDA"):
        check_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        check_device("gpu")
    assert check_device("cpu") == torch.device("cpu")
    torch.save({"a.weight": torch.randn(3, 3)}, tmp_path / "m.pt")
    (tmp_path / "d").mkdir()
    for src in (tmp_path / "m.pt", tmp_path / "d"):
        capsys.readouterr()
        assert main(["refine", str(src), "-o", str(tmp_path / "out"), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "built without CUDA" in err
    assert not (tmp_path / "out").exists()


def test_a_bias_that_does_not_fit_its_weight_is_named_before_any_work():
    state = {"h.0.c_attn.weight": torch.randn(4, 12), "h.0.c_attn.bias": torch.randn(12)}  # stored (in, out)
    for dry_run in (False, True):
        with pytest.raises(ValueError, match=r"bias 'h\.0\.c_attn\.bias' has shape \[12\] but its weight .* \[4, 12\]"):
            svs.refine_state_dict(state, dry_run=dry_run)


def test_meta_model_is_one_clear_error():
    """README: refine_model raises one error naming the parameter for what it cannot refine; a model
    on the meta device has no data: one ValueError (not IndexError / NotImplementedError at random)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to("meta")
    for dry_run in (False, True):
        with pytest.raises(ValueError, match="'0.weight' is on the meta device"):
            svs.refine_model(model, dry_run=dry_run)


def test_refine_model_is_all_or_nothing_on_a_failed_certificate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.Linear(6, 6))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.ops.svs._corrupt_next("reverse", 0)
    with pytest.raises(svs.RefineError, match=r"parameter '\d\.weight' .*fails its certificate"):
        svs.refine_model(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    state = {n: t.clone() for n, t in before.items()}
    torch.ops.svs._corrupt_next("map", 0)
    with pytest.raises(svs.RefineError, match="fails its certificate"):
        svs.refine_state_dict(state)
    assert all(torch.equal(state[n], before[n]) for n in state)
    torch.ops.svs._corrupt_next("map", 0)
    svs.refine_model(model, certify=False)  # the switch reaches the operator: no error
    assert not all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@requires_cuda
def test_refine_model_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 40, 3, bias=False),
        torch.nn.Flatten(), torch.nn.Linear(40 * 4 * 4, 64), torch.nn.Linear(64, 10),
    )
    cpu_model, gpu_model = copy.deepcopy(model), copy.deepcopy(model).to(DEVICE)
    svs.refine_model(cpu_model, preset="generic")
    svs.refine_model(gpu_model, preset="generic")
    before = dict(model.named_parameters())
    for name, p in gpu_model.named_parameters():
        assert p.device.type == torch.device(DEVICE).type
        expected = dict(cpu_model.named_parameters())[name].detach().double().numpy()
        assert not np.allclose(expected, before[name].detach().double().numpy()), name
        assert_matches(p.detach().cpu(), expected, CUDA_TOL[torch.float32] + TOL[torch.float32])
