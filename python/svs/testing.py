"""Tools to make test checkpoints: small Hugging Face style checkpoints, generated offline.

:func:`llama_state_dict` gives the tensor names ``transformers`` writes for a Llama (Qwen2 with
``bias=True``: q/k/v biases) model; :func:`write_hf_dir` writes a state dict in shards named and
indexed as ``save_pretrained`` names them, with config, generation config and tokenizer files.
The tests, the benchmarks and users trying ``svs refine DIR`` all use these (no transformers needed)::

    from pathlib import Path
    from svs.testing import llama_state_dict, write_hf_dir
    sd = llama_state_dict(layers=4, hidden=256, intermediate=768, kv=64)
    write_hf_dir(Path("llama"), sd, max_shard_bytes=2_000_000)  # 4 shards and an index
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

Fill = Callable[[str, torch.Tensor], torch.Tensor]


def llama_state_dict(layers: int = 2, hidden: int = 32, intermediate: int = 48, kv: int = 16, vocab: int = 64,
                     bias: bool = True, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                     meta: bool = False) -> Dict[str, torch.Tensor]:
    """Random weights (N(0, 1/fan_in); norms 1) with the names and shapes of ``LlamaForCausalLM``
    (``bias``: q/k/v biases, as Qwen2 has). ``meta``: shapes only, no data."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape: int) -> torch.Tensor:
        if meta:
            return torch.empty(shape, dtype=dtype, device="meta")
        return (torch.randn(shape, generator=gen) / shape[-1] ** 0.5).to(dtype)

    sd = {"model.embed_tokens.weight": t(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj, rows in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden)):
            sd[f"{p}self_attn.{proj}.weight"] = t(rows, hidden)
            if bias and proj != "o_proj":
                sd[f"{p}self_attn.{proj}.bias"] = t(rows)
        sd[f"{p}mlp.gate_proj.weight"] = t(intermediate, hidden)
        sd[f"{p}mlp.up_proj.weight"] = t(intermediate, hidden)
        sd[f"{p}mlp.down_proj.weight"] = t(hidden, intermediate)
        sd[f"{p}input_layernorm.weight"] = torch.ones(hidden, dtype=dtype, device="meta" if meta else "cpu")
        sd[f"{p}post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype, device="meta" if meta else "cpu")
    sd["model.norm.weight"] = torch.ones(hidden, dtype=dtype, device="meta" if meta else "cpu")
    sd["lm_head.weight"] = t(vocab, hidden)
    return sd


def split_shards(names: List[str], sizes: Dict[str, int], max_shard_bytes: int) -> List[List[str]]:
    """Names in shards of at most ``max_shard_bytes`` (one tensor more if it alone is bigger), in
    order, as ``save_pretrained(max_shard_size=...)`` splits them."""
    shards: List[List[str]] = [[]]
    used = 0
    for name in names:
        if shards[-1] and used + sizes[name] > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += sizes[name]
    return shards


def write_hf_dir(root: Path, state: Dict[str, torch.Tensor], max_shard_bytes: Optional[int] = None,
                 shards: Optional[List[List[str]]] = None, fill: Fill = lambda name, t: t) -> Path:
    """Writes ``state`` as ``save_pretrained`` does: ``model.safetensors`` if it fits in one shard,
    else ``model-0000k-of-0000N.safetensors`` and ``model.safetensors.index.json``; plus
    ``config.json``, ``generation_config.json`` and ``tokenizer.json``. ``fill(name, tensor)``
    gives the data of each tensor when its shard is written (meta tensors in ``state`` keep a
    checkpoint larger than memory out of memory)."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    sizes = {n: t.numel() * t.element_size() for n, t in state.items()}
    if shards is None:
        shards = split_shards(list(state), sizes, max_shard_bytes or sum(sizes.values()))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (root / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    if len(shards) == 1:
        save_file({n: fill(n, state[n]) for n in shards[0]}, str(root / "model.safetensors"), metadata={"format": "pt"})
        return root
    weight_map = {}
    for k, names in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: fill(n, state[n]) for n in names}, str(root / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return root
