"""Build our CausalLM straight from a GGUF file, its matrices kept quantized (QuantLinear)."""

from __future__ import annotations

from pathlib import Path

import torch

from adaserve.kernels.layout import cat
from adaserve.models.config import ModelConfig
from adaserve.models.gguf_weights import dense_tensor, llama_rope_row_order, open_gguf, pack_tensor
from adaserve.models.llama import CausalLM, Rotary
from adaserve.models.quantized import QuantEmbedding, QuantLinear

# Our fused linear -> the GGUF tensors concatenated into it, in order.
FUSED = {
    "self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "self_attn.o_proj": ("attn_output",),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
    "mlp.down_proj": ("ffn_down",),
}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _dense(tensors, name: str) -> torch.Tensor:
    return torch.from_numpy(dense_tensor(tensors[name]).copy())


def _layer_linear(tensors, cfg: ModelConfig, layer: int, parts: tuple[str, ...]) -> QuantLinear:
    packed, biases = [], []
    for part in parts:
        t = tensors[f"blk.{layer}.{part}.weight"]
        order = None
        if cfg.model_type == "llama" and part in ("attn_q", "attn_k"):
            order = llama_rope_row_order(t.data.shape[0], cfg.num_heads if part == "attn_q" else cfg.num_kv_heads)
        packed.append(pack_tensor(t, order))
        bias_name = f"blk.{layer}.{part}.bias"
        if bias_name in tensors:
            biases.append(_dense(tensors, bias_name))
    return QuantLinear(cat(packed), torch.cat(biases) if biases else None)


def _replace(model: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def load_gguf_model(
    gguf_path: str | Path, cfg: ModelConfig, max_positions: int | None = None, num_layers: int | None = None
) -> CausalLM:
    """`cfg` comes from the converted model directory (read_model_config); CPU only."""
    tensors = open_gguf(gguf_path)
    if num_layers is not None:
        cfg = ModelConfig(**{**cfg.__dict__, "num_layers": num_layers})
    with torch.device("meta"):
        model = CausalLM(cfg, max_positions)
    embed = pack_tensor(tensors["token_embd.weight"])
    head = pack_tensor(tensors["output.weight"]) if "output.weight" in tensors else embed
    model.embed_tokens, model.lm_head = QuantEmbedding(embed), QuantLinear(head)
    norms = {"norm.weight": _dense(tensors, "output_norm.weight")}
    for i in range(cfg.num_layers):
        for ours, parts in FUSED.items():
            _replace(model, f"layers.{i}.{ours}", _layer_linear(tensors, cfg, i, parts))
        for ours, theirs in NORMS.items():
            norms[f"layers.{i}.{ours}.weight"] = _dense(tensors, f"blk.{i}.{theirs}.weight")
    model.load_state_dict(norms, strict=False, assign=True)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"{gguf_path}: no GGUF tensor for {leftover[:5]}")
    model.rotary = Rotary(cfg.head_dim, cfg.rope_theta, max_positions or cfg.max_position_embeddings)
    model.batch_invariant = True  # int8 activations amplify batch-shape noise; see key_lists.py
    del tensors
    _release_freed_memory()
    return model.eval().requires_grad_(False)


def _release_freed_memory() -> None:
    """Hand the decoding's freed buffers back to the OS (glibc keeps them otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
