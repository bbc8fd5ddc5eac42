"""svs.refine_model: presets against the authors' per-parameter rules, selection, all-or-nothing."""
import numpy as np
import pytest
import torch
from torch import nn

import svs
from tests.reference import assert_matches, reference_bias, reference_refine

pytest.importorskip("diffusers")
pytest.importorskip("torch_pruning")


def authors_ddpm_reference(model: nn.Module) -> dict:
    """The authors' DDPM procedure, literally, one parameter at a time in float64: reset every
    GroupNorm to 1/0, then for each named parameter without 'norm' in its name scale 'weight'
    (ndim >= 2) by U sqrt(S) V^T and 'bias' by b / sqrt(||b|| + 1e-8)."""
    expected = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.GroupNorm):
            expected[f"{module_name}.weight"] = np.ones(module.weight.shape)
            expected[f"{module_name}.bias"] = np.zeros(module.bias.shape)
    for name, p in model.named_parameters():
        if "norm" in name:
            continue
        if "weight" in name and p.ndim >= 2:
            expected[name] = reference_refine(p)
        elif "bias" in name:
            expected[name] = reference_bias(p)
    return expected


@pytest.fixture(scope="module")
def pruned_ddpm():
    from svs.experiments.pruning import pruned_ddpm_cifar10

    return pruned_ddpm_cifar10(0.5, seed=1)


def test_ddpm_preset_matches_authors_rules_parameter_by_parameter(pruned_ddpm):
    model = pruned_ddpm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = authors_ddpm_reference(model)
    report = svs.refine_model(model, preset="ddpm")
    # counted from the model itself (diffusers' UNet layout, not a number that holds for one version)
    weights = [n for n in expected if n.endswith("weight") and "norm" not in n]
    assert len(report.weights) == len(weights) > 100 and len(report.biases) == len(weights)
    for name, p in model.named_parameters():
        if name in expected:
            assert_matches(p.detach(), expected[name])
        else:
            assert torch.equal(p, before[name]), f"{name} should not change"
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    assert torch.isfinite(model(x, t).sample).all()


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


def test_failure_names_the_parameter_and_changes_nothing(pruned_ddpm):
    model = pruned_ddpm
    name = "up_blocks.1.attentions.0.to_k.weight"
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] = float("inf")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(svs.RefineError, match=f"parameter '{name}'.*NaN or Inf"):
        svs.refine_model(model, preset="ddpm")
    for n, p in model.named_parameters():  # GroupNorm not reset either
        assert torch.equal(p.nan_to_num(), before[n].nan_to_num()), n


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
