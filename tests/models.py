"""Tiny models of the real libraries (transformers, diffusers), built offline from configs, and
the two ways of refining them that must agree: in memory, and through save_pretrained ->
svs refine DIR -> from_pretrained. Each builder skips its test when the library is missing."""
import copy
from pathlib import Path

import pytest
import torch

import svs
from svs.sharded import refine_dir


def assert_inf_weight_refused(model, name: str, preset: str) -> None:
    """Puts an Inf into parameter `name`: refine_model must raise one RefineError naming it and
    leave every parameter as it was (the preset's norm resets included)."""
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] = float("inf")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(svs.RefineError, match=f"parameter '{name}'.*NaN or Inf"):
        svs.refine_model(model, preset=preset)
    for n, p in model.named_parameters():
        assert torch.equal(p.nan_to_num(), before[n].nan_to_num()), n


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def on_disk(model, cls, tmp_path: Path, preset: str, **load):
    """save_pretrained -> refine_dir -> cls.from_pretrained, checking no key is missing or unexpected."""
    model.save_pretrained(tmp_path / "src")
    report = refine_dir(tmp_path / "src", tmp_path / "out", preset=preset)
    loaded, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True, **load)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return loaded, report


def in_memory(model, preset: str):
    refined = copy.deepcopy(model)
    return refined, svs.refine_model(refined, preset=preset)


def tiny(config_cls, **extra):
    return config_cls(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=32, **extra)


def llama():
    t = pytest.importorskip("transformers")
    return t.LlamaForCausalLM(tiny(t.LlamaConfig)), t.LlamaForCausalLM


def llama_tied():
    t = pytest.importorskip("transformers")
    return t.LlamaForCausalLM(tiny(t.LlamaConfig, tie_word_embeddings=True)), t.LlamaForCausalLM


def qwen2():
    t = pytest.importorskip("transformers")
    return t.Qwen2ForCausalLM(tiny(t.Qwen2Config)), t.Qwen2ForCausalLM


def gpt2():
    t = pytest.importorskip("transformers")
    c = t.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    return t.GPT2LMHeadModel(c), t.GPT2LMHeadModel


def mixtral():
    t = pytest.importorskip("transformers")
    return t.MixtralForCausalLM(tiny(t.MixtralConfig, num_local_experts=4)), t.MixtralForCausalLM


def tiny_unet():
    d = pytest.importorskip("diffusers")
    return d.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                         norm_num_groups=4)


