"""svs.presets: the stylegan and generic rules and include/exclude on small modules; the
``transformer`` preset on a small Llama-style model built offline from a config, with the module
tree (so the parameter names) of ``transformers``' ``LlamaForCausalLM``, and on the names of other
families (GPT-2, BERT, Mixtral, T5). The ddpm preset against the authors' code: test_model.py."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import svs  # noqa: E402
from svs import sharded  # noqa: E402
from svs.testing import llama_state_dict, write_hf_dir  # noqa: E402
from tests.reference import assert_matches, reference_refine  # noqa: E402

CONFIG = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "vocab_size": 64, "attention_bias": True}


class RMSNorm(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))


class Block(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        h, kv = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"] * c["num_key_value_heads"]
        self.self_attn = nn.Module()
        for name, out in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            setattr(self.self_attn, name, nn.Linear(h, out, bias=c["attention_bias"]))
        self.self_attn.o_proj = nn.Linear(h, h, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(h, c["intermediate_size"], bias=False)
        self.mlp.up_proj = nn.Linear(h, c["intermediate_size"], bias=False)
        self.mlp.down_proj = nn.Linear(c["intermediate_size"], h, bias=False)
        self.input_layernorm = RMSNorm(h)
        self.post_attention_layernorm = RMSNorm(h)


class LlamaLike(nn.Module):
    """The parameters of LlamaForCausalLM(LlamaConfig(**config)), by the same names."""

    def __init__(self, c: dict):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.model.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.model.norm = RMSNorm(c["hidden_size"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)


def test_transformer_preset_on_a_llama_model():
    torch.manual_seed(0)
    model = LlamaLike(CONFIG)
    assert "model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = svs.refine_model(model, preset="transformer")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    blocks = {f"model.layers.{i}.{m}.{leaf}" for i in range(2)
              for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj") for leaf in ("weight", "bias")}
    assert changed == blocks & set(before)
    assert len(report.weights) == 14 and len(report.biases) == 6
    narrowed = svs.select(before, "transformer", include=r"\.mlp\.", exclude="down_proj")
    assert {n for n, r in narrowed.items() if r is svs.Role.WEIGHT} == {
        f"model.layers.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj")}


def test_transformer_preset_other_families():
    t2, t1 = torch.empty(8, 8, device="meta"), torch.empty(8, device="meta")
    names = {
        "transformer.h.0.attn.c_attn.weight": t2, "transformer.h.0.attn.c_attn.bias": t1,  # GPT-2 (Conv1D)
        "transformer.h.0.ln_1.weight": t1, "transformer.wte.weight": t2, "transformer.wpe.weight": t2,
        "bert.encoder.layer.0.attention.self.query.weight": t2, "bert.embeddings.word_embeddings.weight": t2,
        "bert.encoder.layer.0.attention.output.LayerNorm.weight": t1,
        "model.layers.0.block_sparse_moe.experts.3.w1.weight": t2,  # Mixtral expert
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": t2,  # T5 (an embedding)
        "encoder.block.0.layer.0.SelfAttention.q.weight": t2,
        "model.layers.0.block_sparse_moe.gate.weight": t2, "model.layers.0.mlp.gate.weight": t2,  # Mixtral routers
        "model.layers.0.mlp.router.weight": t2, "model.layers.0.mlp.router.bias": t1,  # GPT-OSS router
        "model.layers.0.mlp.shared_expert_gate.weight": t2,  # Qwen2-MoE
        "model.layers.0.mlp.gate_proj.weight": t2,  # a projection, not a router
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight": t2,  # PEFT
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": t2,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": t2,
    }
    roles, why = svs.presets.select_with_reasons(names, "transformer")
    assert {n for n, r in roles.items() if r is not svs.Role.SKIP} == {
        "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
        "bert.encoder.layer.0.attention.self.query.weight", "model.layers.0.block_sparse_moe.experts.3.w1.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight", "model.layers.0.mlp.gate_proj.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"}
    assert set(why) == {n for n, r in roles.items() if r is svs.Role.SKIP}  # every one left alone says why
    assert why["model.layers.0.mlp.gate.weight"] == why["model.layers.0.mlp.router.weight"] == "MoE router"
    assert why["model.layers.0.mlp.shared_expert_gate.weight"] == "MoE router"
    assert why["model.layers.0.mlp.router.bias"] == "MoE router"
    assert why["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == "LoRA adapter"
    assert why["transformer.wte.weight"] == "embedding" and why["transformer.h.0.ln_1.weight"] == "norm layer"
    assert svs.select(names, "generic")["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"] \
        is svs.Role.SKIP  # adapters are left alone by every preset


def test_reasons_for_include_exclude_and_unpaired_biases():
    t2, t1 = torch.empty(4, 4, device="meta"), torch.empty(4, device="meta")
    names = {"a.weight": t2, "a.bias": t1, "b.weight": t2, "b.bias": t1, "c.weight": t1, "d.scale": t1}
    _, why = svs.presets.select_with_reasons(names, "generic", include="^[bc]", exclude=r"b\.weight")
    assert why == {"a.weight": "not matched by include", "a.bias": "not matched by include",  # the preset's own
                   "b.weight": "matched by exclude", "b.bias": "its weight is not refined",  # reason comes first
                   "c.weight": "a 1-D weight (not a matrix)", "d.scale": "not a weight or bias"}
    report = svs.refine_state_dict({n: torch.randn(t.shape) for n, t in names.items()}, exclude=r"^b\.weight")[1]
    assert report.left_alone == {"matched by exclude": ["b.weight"], "its weight is not refined": ["b.bias"],
                                 "a 1-D weight (not a matrix)": ["c.weight"], "not a weight or bias": ["d.scale"]}
    assert "left alone: 1 matched by exclude (b.weight)" in str(report)
    assert report.to_dict()["left_alone"] == report.left_alone


def test_transformer_preset_on_a_sharded_directory(tmp_path):
    state = llama_state_dict(layers=2, seed=5)
    src = write_hf_dir(tmp_path / "m", state, max_shard_bytes=10_000)
    report = sharded.refine_dir(src, tmp_path / "out", preset="transformer")
    assert len(report.weights) == 14 and len(report.biases) == 6
    expected, _ = svs.refine_state_dict(state, preset="transformer")
    got = sharded.open_dir(tmp_path / "out").load(list(state))
    assert all(torch.equal(got[n], expected[n]) for n in state)
    assert torch.equal(got["lm_head.weight"], state["lm_head.weight"])


class TinyStyleGAN(nn.Module):
    """Parameter names as in the official StyleGAN2/3 generator."""

    def __init__(self):
        super().__init__()
        self.mapping = nn.ModuleDict({"fc0": nn.Linear(8, 8)})
        block = nn.Module()
        block.const = nn.Parameter(torch.randn(16, 4, 4))
        conv = nn.Module()
        conv.weight = nn.Parameter(torch.randn(16, 16, 3, 3))
        conv.bias = nn.Parameter(torch.randn(16))
        conv.noise_strength = nn.Parameter(torch.tensor(0.1))
        conv.affine = nn.Linear(8, 16)
        block.conv1 = conv
        block.torgb = nn.Conv2d(16, 3, 1)
        self.synthesis = nn.ModuleDict({"b4": block})


def test_stylegan_preset_selects_synthesis_only():
    g = TinyStyleGAN()
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    report = svs.refine_model(g, preset="stylegan2")
    changed = {n for n, p in g.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {
        "synthesis.b4.conv1.weight", "synthesis.b4.conv1.bias", "synthesis.b4.conv1.affine.weight",
        "synthesis.b4.conv1.affine.bias", "synthesis.b4.torgb.weight", "synthesis.b4.torgb.bias",
    }
    assert {r.name for r in report.records} == changed
    assert_matches(g.synthesis.b4.conv1.weight.detach(), reference_refine(before["synthesis.b4.conv1.weight"]))


def test_stylegan_preset_on_the_synthesis_network_itself():
    g = TinyStyleGAN()
    report = svs.refine_model(g.synthesis, preset="stylegan3")
    assert len(report.weights) == 3


def test_generic_include_exclude_and_bias_pairing():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.LayerNorm(4))
    report = svs.refine_model(model, exclude=r"^2\.weight$", dry_run=True)
    assert [r.name for r in report.records] == ["0.weight", "0.bias"]  # 2.bias has no refined weight
    report = svs.refine_model(model, include=r"^2\.", dry_run=True)
    assert [r.name for r in report.records] == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="selects no weight"):
        svs.refine_model(model, include="nothing-matches")
    with pytest.raises(ValueError, match="unknown preset"):
        svs.refine_model(model, preset="vit")
