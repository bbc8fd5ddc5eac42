"""svs.layouts: each layer type decomposed as the (out, in...) matrix of its equivalent layer,
whatever its storage, against float64 references; and models of the real libraries
(transformers, peft, diffusers; each built offline from a tiny config), refined in memory and
through save_pretrained -> svs refine DIR -> from_pretrained, which must agree bit for bit."""
import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import svs  # noqa: E402
from svs import layouts  # noqa: E402
from svs.sharded import refine_dir  # noqa: E402
from tests.models import (assert_same, gpt2, in_memory, llama, llama_tied, mixtral, on_disk, qwen2, tiny,  # noqa: E402
                          tiny_unet)
from tests.reference import assert_matches, reference_bias, reference_refine  # noqa: E402


# ---- layer semantics, on plain torch modules -------------------------------------------------

class FusedExperts(nn.Module):
    """The attributes transformers' fused experts modules carry (use_experts_implementation)."""

    def __init__(self, experts=3, hidden=6, inter=4, has_gate=True, has_bias=False, transposed=False,
                 concatenated=True):
        super().__init__()
        self.has_gate, self.has_bias, self.is_transposed, self.is_concatenated = has_gate, has_bias, transposed, concatenated
        up = 2 * inter if has_gate else inter
        first = "gate_up_proj" if has_gate else "up_proj"
        shape = (experts, hidden, up) if transposed else (experts, up, hidden)
        setattr(self, first, nn.Parameter(torch.randn(shape)))
        self.down_proj = nn.Parameter(torch.randn((experts, inter, hidden) if transposed else (experts, hidden, inter)))
        if has_bias:
            setattr(self, f"{first}_bias", nn.Parameter(torch.randn(experts, up)))
            self.down_proj_bias = nn.Parameter(torch.randn(experts, hidden))


def expert_matrices(m: FusedExperts, e: int):
    """Expert e's (out, in) matrices and biases, written out by the definition of each flag."""
    first = m.gate_up_proj if m.has_gate else m.up_proj
    w = first[e].T if m.is_transposed else first[e]
    d = m.down_proj[e].T if m.is_transposed else m.down_proj[e]
    b = getattr(m, "gate_up_proj_bias" if m.has_gate else "up_proj_bias", None)
    b = None if b is None else b[e]
    if not m.has_gate:
        return {"up_proj": (w, b), "down_proj": (d, m.down_proj_bias[e] if m.has_bias else None)}
    half = w.shape[0] // 2
    idx = (slice(0, half), slice(half, None)) if m.is_concatenated else (slice(0, None, 2), slice(1, None, 2))
    return {"gate_proj": (w[idx[0]], None if b is None else b[idx[0]]),
            "up_proj": (w[idx[1]], None if b is None else b[idx[1]]),
            "down_proj": (d, m.down_proj_bias[e] if m.has_bias else None)}


@pytest.mark.parametrize("has_gate,has_bias,transposed,concatenated",
                         [(True, False, False, True), (True, True, True, False), (False, True, False, True)])
def test_fused_experts_are_refined_expert_by_expert(seed, has_gate, has_bias, transposed, concatenated):
    torch.manual_seed(seed)
    m = FusedExperts(has_gate=has_gate, has_bias=has_bias, transposed=transposed, concatenated=concatenated)
    before = copy.deepcopy(m)
    report = svs.refine_model(m)
    parts = expert_matrices(before, 0)
    assert len(report.weights) == 3 * len(parts) and len(report.biases) == (3 * len(parts) if has_bias else 0)
    assert "1.down_proj.weight" in {r.name for r in report.weights}
    for e in range(3):
        for proj, (w, b) in expert_matrices(before, e).items():
            got_w, got_b = expert_matrices(m, e)[proj]
            assert_matches(got_w, reference_refine(w))
            if b is not None:
                assert_matches(got_b, reference_bias(b))


def test_fused_experts_include_selects_parts():
    torch.manual_seed(0)
    m = FusedExperts()
    before = copy.deepcopy(m)
    report = svs.refine_model(m, include=r"\.up_proj")
    assert sorted(r.name for r in report.weights) == [f"{e}.up_proj.weight" for e in range(3)]
    for e in range(3):
        new, old = expert_matrices(m, e), expert_matrices(before, e)
        assert torch.equal(new["gate_proj"][0], old["gate_proj"][0])
        assert torch.equal(new["down_proj"][0], old["down_proj"][0])
        assert_matches(new["up_proj"][0], reference_refine(old["up_proj"][0]))


def test_convs_and_linears_are_refined_as_stored_and_a_grouped_conv_as_one_matrix(seed):
    """The decision for grouped convs: the whole (out, in/groups * k * k) matrix, as the authors'
    code (a reshape of the stored weight), not group by group."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Conv1d(6, 5, 2), nn.Conv3d(5, 3, 1), nn.Linear(3, 2))
    before = copy.deepcopy(model)
    assert layouts.of_module(model) == []
    svs.refine_model(model)
    for new, old in zip(model, before):
        assert_matches(new.weight, reference_refine(old.weight))  # reference: W.reshape(out, -1)
        assert_matches(new.bias, reference_bias(old.bias))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_is_refined_as_its_equivalent_conv(seed, groups):
    torch.manual_seed(seed)
    ct = nn.ConvTranspose2d(6, 4, 3, groups=groups)  # weight (6, 4/g, 3, 3), bias (4,)
    w, b = ct.weight.detach().clone(), ct.bias.detach().clone()
    report = svs.refine_model(ct)
    assert [r.shape for r in report.weights] == [(4, 6 // groups, 3, 3)]

    def as_conv(t):  # (in, out/g, k, k) -> (out, in/g, k, k): the conv that ConvTranspose2d inverts
        return t.unflatten(0, (groups, -1)).transpose(1, 2).reshape(4, 6 // groups, 3, 3)

    assert_matches(as_conv(ct.weight), reference_refine(as_conv(w)))
    assert_matches(ct.bias, reference_bias(b))


def test_expand_then_fold_is_the_identity_and_partial_folds_keep_the_rest(seed):
    torch.manual_seed(seed)
    model = nn.ModuleDict({"ct": nn.ConvTranspose1d(4, 6, 3, groups=2), "ex": FusedExperts(has_bias=True, transposed=True,
                                                                                           concatenated=False)})
    named = {n: p.detach() for n, p in model.named_parameters()}
    views, fold = layouts.expand(named, layouts.of_module(model))
    assert set(fold(views)) == set(named)
    assert all(torch.equal(fold(views)[n], named[n]) for n in named)
    one = "ex.1.up_proj.weight"
    out = fold({one: torch.zeros_like(views[one])})
    assert set(out) == set(layouts.Experts.of("ex.", model["ex"]).stored)
    assert torch.equal(expert_matrices(_with(model["ex"], out), 1)["up_proj"][0], torch.zeros_like(views[one]))
    assert torch.equal(out["ex.down_proj"], named["ex.down_proj"])


def _with(m, values):
    new = copy.deepcopy(m)
    for name, v in values.items():
        getattr(new, name.split(".")[-1]).data.copy_(v)
    return new


def test_state_dict_with_layouts_matches_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, groups=2), nn.Conv2d(4, 4, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    svs.refine_model(model)
    plain, _ = svs.refine_state_dict(state)
    laid, _ = svs.refine_state_dict(state, layouts=layouts.of_module(model))
    assert all(torch.equal(laid[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(plain["0.weight"], laid["0.weight"])  # square in == out: only the layout tells


# ---- the real libraries ------------------------------------------------------------------------

@pytest.mark.parametrize("build,preset", [(llama, "transformer"), (qwen2, "transformer"), (gpt2, "transformer"),
                                          (gpt2, "generic"), (mixtral, "transformer"), (llama_tied, "generic")],
                         ids=["llama", "qwen2", "gpt2", "gpt2-generic", "mixtral", "tied-generic"])
def test_transformers_model_in_memory_equals_on_disk(tmp_path, build, preset):
    torch.manual_seed(0)
    model, cls = build()
    mem, mem_report = in_memory(model, preset)
    disk, disk_report = on_disk(model, cls, tmp_path, preset)
    assert len(mem_report.weights) == len(disk_report.weights) > 0
    assert len(mem_report.biases) == len(disk_report.biases)
    assert_same(mem.state_dict(), disk.state_dict())
    changed = [k for k, v in mem.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert len(changed) >= len(mem_report.weights) // 8  # fused experts: one tensor holds several matrices
    assert any("mlp" in k for k in changed)


def test_two_gloo_processes_equal_one_process(tmp_path):
    """Layouts under process_group=: the transposed views travel between ranks as the matrices."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                          "127.0.0.1", "--master-port", str(port), str(ROOT / "tests" / "svs" / "layouts_dist_worker.py"),
                          str(tmp_path / "result")], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for build in (gpt2, mixtral):
        torch.manual_seed(0)
        model, _ = build()
        svs.refine_model(model, preset="transformer")
        got = load_file(str(tmp_path / f"result.{build.__name__}"))
        assert_same(got, {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"})


def test_gpt2_conv1d_is_refined_as_its_linear(seed):
    t = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model, _ = gpt2()
    attn = model.transformer.h[0].attn.c_attn
    w, b = attn.weight.detach().clone(), attn.bias.detach().clone()
    with torch.no_grad():
        b.normal_()
        attn.bias.copy_(b)
    assert isinstance(attn, t.pytorch_utils.Conv1D) and w.shape == (32, 96)
    svs.refine_model(model, preset="transformer")
    assert_matches(attn.weight.T, reference_refine(w.T))  # the (out, in) matrix, as nn.Linear stores it
    assert_matches(attn.weight, reference_refine(w.T).T)  # == the transpose's result: layout-independent
    assert_matches(attn.bias, reference_bias(b))


def test_mixtral_experts_are_refined_per_expert_and_routers_are_left_alone():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, _ = mixtral()
    report = svs.refine_model(copy.deepcopy(model), preset="transformer")
    names = {r.name for r in report.weights}
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in names and "model.layers.0.mlp.experts.0.down_proj.weight" in names
    assert len(names) == 2 * (4 + 4 * 3)  # per layer: q, k, v, o and 4 experts x (gate, up, down)
    assert report.left_alone["MoE router"] == [f"model.layers.{i}.mlp.gate.weight" for i in range(2)]
    assert "outside the transformer blocks (e.g. the output head)" in report.left_alone
    text = str(report)
    assert "left alone: 2 MoE router" in text and "left alone: 1 embedding" in text
    experts = svs.refine_model(copy.deepcopy(model), preset="transformer", include="experts")
    assert len(experts.weights) == 2 * 4 * 3


def test_peft_lora_refines_base_weights_and_leaves_adapters(tmp_path):
    t = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = t.LlamaForCausalLM(tiny(t.LlamaConfig))
    expected, _ = in_memory(base, "transformer")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = svs.refine_model(model, preset="transformer")
    assert len(report.left_alone["LoRA adapter"]) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, before[n]), n
    merged_free = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                   for k, v in model.state_dict().items() if "lora_" not in k}
    assert_same(merged_free, expected.state_dict())
    # on disk: the base model's directory refined, the adapter loaded on top unchanged
    model.save_pretrained(tmp_path / "adapter")
    base.save_pretrained(tmp_path / "base")
    refine_dir(tmp_path / "base", tmp_path / "base_svs", preset="transformer")
    loaded = peft.PeftModel.from_pretrained(t.LlamaForCausalLM.from_pretrained(tmp_path / "base_svs"), tmp_path / "adapter")
    assert_same(loaded.state_dict(), model.state_dict())


def test_diffusers_unet_in_memory_equals_on_disk(tmp_path):
    d = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = tiny_unet()
    mem, report = in_memory(unet, "ddpm")
    disk, disk_report = on_disk(unet, d.UNet2DModel, tmp_path, "ddpm")
    assert len(report.weights) == len(disk_report.weights) > 20
    assert_same(mem.state_dict(), disk.state_dict())


def test_diffusers_conv_transpose_in_memory_equals_on_disk(tmp_path):
    d = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = d.UNet1DModel(block_out_channels=(8, 16), in_channels=4, out_channels=4, extra_in_channels=0,
                         down_block_types=("DownResnetBlock1D", "DownResnetBlock1D"), up_block_types=("UpResnetBlock1D",),
                         mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", act_fn="mish",
                         use_timestep_embedding=True, flip_sin_to_cos=False, freq_shift=1, time_embedding_type="positional",
                         norm_num_groups=4, layers_per_block=1)
    convt = [n for n, m in unet.named_modules() if isinstance(m, nn.ConvTranspose1d)]
    assert convt, "this config should have a transposed conv"
    mem, _ = in_memory(unet, "generic")
    disk, _ = on_disk(unet, d.UNet1DModel, tmp_path, "generic")
    assert_same(mem.state_dict(), disk.state_dict())


def test_a_single_file_beside_its_config_is_refined_with_its_layouts(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from svs.cli import main

    torch.manual_seed(0)
    model, _ = gpt2()
    model.save_pretrained(tmp_path / "g")
    mem, _ = in_memory(model, "transformer")
    assert main(["refine", str(tmp_path / "g" / "model.safetensors"), "-o", str(tmp_path / "out.safetensors"),
                 "--preset", "transformer", "-q"]) == 0
    got = load_file(str(tmp_path / "out.safetensors"))
    assert_same(got, {k: v for k, v in mem.state_dict().items() if k in got})


@pytest.mark.filterwarnings("ignore:Unwrapped parameters")  # Torch-Pruning's note on the RMSNorm weights
def test_a_torch_pruning_pruned_llama_in_memory_equals_on_disk(tmp_path):
    """Torch-Pruning halves the MLP width (attention left whole); with the config's
    intermediate_size updated, save_pretrained -> refine_dir -> from_pretrained round-trips."""
    pytest.importorskip("transformers")
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model, cls = llama()
    keep = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(("up_proj", "gate_proj"))]
    tp.pruner.BasePruner(model, torch.randint(0, 64, (1, 8)), importance=tp.importance.MagnitudeImportance(p=2),
                         pruning_ratio=0.5, ignored_layers=keep + [model.model.embed_tokens],
                         output_transform=lambda out: out.logits).step()
    assert model.model.layers[0].mlp.down_proj.weight.shape == (32, 24)
    model.config.intermediate_size = 24
    mem, _ = in_memory(model, "transformer")
    disk, _ = on_disk(model, cls, tmp_path, "transformer")
    assert_same(mem.state_dict(), disk.state_dict())
