"""svs.testing: the test checkpoints are laid out as save_pretrained lays them out, hold the state
dict they were given (or what `fill` gives), and have Llama's names and shapes."""
import json

import pytest
import torch
from safetensors.torch import load_file

from svs.testing import llama_state_dict, split_shards, write_hf_dir


def test_llama_state_dict_names_and_shapes():
    sd = llama_state_dict(layers=3, hidden=32, intermediate=48, kv=16, vocab=64)
    assert len([n for n in sd if n.endswith("q_proj.bias")]) == 3
    assert sd["model.layers.2.self_attn.k_proj.weight"].shape == (16, 32)
    assert sd["model.layers.0.mlp.down_proj.weight"].shape == (32, 48)
    assert sd["lm_head.weight"].shape == (64, 32) and sd["model.norm.weight"].eq(1).all()
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert not any(n.endswith("bias") for n in llama_state_dict(layers=1, bias=False))
    meta = llama_state_dict(layers=3, meta=True)
    assert {n: t.shape for n, t in meta.items()} == {n: t.shape for n, t in sd.items()}
    assert all(t.is_meta for t in meta.values())
    again = llama_state_dict(layers=3, hidden=32, intermediate=48, kv=16, vocab=64)
    assert all(torch.equal(sd[n], again[n]) for n in sd), "seeded: the same weights every time"


def test_split_shards_in_order_one_oversized_tensor_alone():
    sizes = {"a": 4, "b": 4, "c": 10, "d": 1, "e": 3}
    assert split_shards(list(sizes), sizes, 8) == [["a", "b"], ["c"], ["d", "e"]]
    assert split_shards(list(sizes), sizes, 100) == [list(sizes)]


def test_write_hf_dir_one_file(tmp_path):
    sd = llama_state_dict(layers=1)
    root = write_hf_dir(tmp_path / "m", sd)
    assert sorted(p.name for p in root.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json"]
    got = load_file(str(root / "model.safetensors"))
    assert got.keys() == sd.keys() and all(torch.equal(got[n], sd[n]) for n in sd)


@pytest.mark.parametrize("explicit", [False, True])
def test_write_hf_dir_shards_and_index(tmp_path, explicit):
    sd = llama_state_dict(layers=2)
    sizes = {n: t.numel() * t.element_size() for n, t in sd.items()}
    shards = [list(sd)[:5], list(sd)[5:]] if explicit else None
    root = write_hf_dir(tmp_path / "m", sd, max_shard_bytes=6_000, shards=shards)
    index = json.loads((root / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(sizes.values())
    files = sorted(set(index["weight_map"].values()))
    count = len(shards) if explicit else len(split_shards(list(sd), sizes, 6_000))
    assert count > 1 and files == [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    for file in files:
        got = load_file(str(root / file))
        assert sorted(got) == sorted(n for n, f in index["weight_map"].items() if f == file)
        assert all(torch.equal(got[n], sd[n]) for n in got)
    assert not (root / "model.safetensors").exists()


def test_write_hf_dir_fill_gives_the_data_of_meta_tensors(tmp_path):
    meta = llama_state_dict(layers=1, meta=True)
    root = write_hf_dir(tmp_path / "m", meta, fill=lambda name, t: torch.full(t.shape, 0.5, dtype=t.dtype))
    got = load_file(str(root / "model.safetensors"))
    assert got.keys() == meta.keys() and all(t.eq(0.5).all() and t.dtype == torch.bfloat16 for t in got.values())
