"""Build our CausalLM straight from a GGUF file, its matrices kept quantized (QuantLinear).

Decoding a GGUF file into the kernels' layout takes tens of seconds for a 1.5B model, so the packed
tensors are cached once per file (`<cache>/packed/`, keyed by the file's name, size, mtime and the
layout version) and later loads read them back in about a second.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adaserve.kernels.layout import PackedWeight, cat, requantize_int4
from adaserve.models.config import ModelConfig
from adaserve.models.gguf_weights import dense_tensor, llama_rope_row_order, open_gguf, pack_tensor
from adaserve.models.llama import CausalLM, Rotary
from adaserve.models.quantized import QuantEmbedding, QuantLinear

log = logging.getLogger(__name__)
LAYOUT_VERSION = 2  # bump when the packed layout or the decoding changes: old caches are not read
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


def _put(state: dict, name: str, packed: PackedWeight) -> None:
    state[f"{name}.weight"], state[f"{name}.scales"] = packed.weight, packed.scales


def _layer_state(tensors, cfg: ModelConfig, layer: int, state: dict) -> None:
    for ours, parts in FUSED.items():
        packed, biases = [], []
        for part in parts:
            t = tensors[f"blk.{layer}.{part}.weight"]
            order = None
            if cfg.model_type == "llama" and part in ("attn_q", "attn_k"):
                heads = cfg.num_heads if part == "attn_q" else cfg.num_kv_heads
                order = llama_rope_row_order(t.data.shape[0], heads)
            packed.append(pack_tensor(t, order))
            if f"blk.{layer}.{part}.bias" in tensors:
                biases.append(_dense(tensors, f"blk.{layer}.{part}.bias"))
        _put(state, f"layers.{layer}.{ours}", cat(packed))
        if biases:
            state[f"layers.{layer}.{ours}.bias"] = torch.cat(biases)
    for ours, theirs in NORMS.items():
        state[f"layers.{layer}.{ours}.weight"] = _dense(tensors, f"blk.{layer}.{theirs}.weight")


def gguf_state(gguf_path: str | Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every tensor of the model in our names, matrices packed. A tied head has no embed_tokens.*."""
    tensors = open_gguf(gguf_path)
    state = {"norm.weight": _dense(tensors, "output_norm.weight")}
    untied = "output.weight" in tensors  # tied: the head reads the embedding's tensors
    _put(state, "embed_tokens" if untied else "lm_head", pack_tensor(tensors["token_embd.weight"]))
    if untied:
        _put(state, "lm_head", pack_tensor(tensors["output.weight"]))
    for i in range(cfg.num_layers):
        _layer_state(tensors, cfg, i, state)
    return state


def int4_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every int8 matrix of a packed state requantized to int4 (a cheaper draft: see
    layout.requantize_int4); int4 matrices and everything else as they are."""
    out = dict(state)
    for name in [key.removesuffix(".scales") for key in state if key.endswith(".scales")]:
        _put(out, name, requantize_int4(_packed(state, name)))
    return out


def _packed(state: dict, name: str) -> PackedWeight:
    weight = state[f"{name}.weight"]
    if weight.dim() != 3 or weight.shape[2] not in (256, 512):  # int4 / int8 blocks; else another layout
        raise ValueError(f"{name}: packed blocks of shape {list(weight.shape)[2:]} are not int4 or int8")
    return PackedWeight(weight, state[f"{name}.scales"], int4=weight.shape[2] == 256)


def _check_shape(name: str, packed: PackedWeight, linear: torch.nn.Module) -> None:
    """A packed matrix must have the shape of the layer it replaces (a stale or foreign cache)."""
    got, want = (packed.out_features, packed.in_features), (linear.out_features, linear.in_features)
    if got != want or packed.scales.shape[:2] != packed.weight.shape[:2]:
        raise ValueError(f"{name}: packed weight is {list(got)}, the layer is {list(want)}")


def model_from_state(state: dict, cfg: ModelConfig, max_positions: int | None = None) -> CausalLM:
    """The model over packed tensors (cfg.num_layers may keep only the first layers)."""
    with torch.device("meta"):
        model = CausalLM(cfg, max_positions)
    head = _packed(state, "lm_head")
    _check_shape("lm_head", head, model.lm_head)
    model.lm_head = QuantLinear(head)
    model.embed_tokens = QuantEmbedding(_packed(state, "embed_tokens") if "embed_tokens.weight" in state else head)
    norms = {"norm.weight": state["norm.weight"]}
    for i in range(cfg.num_layers):
        for ours in FUSED:
            name = f"layers.{i}.{ours}"
            parent, _, attr = name.rpartition(".")
            packed = _packed(state, name)
            _check_shape(name, packed, model.get_submodule(name))
            setattr(model.get_submodule(parent), attr, QuantLinear(packed, state.get(f"{name}.bias")))
        for ours in NORMS:
            norms[f"layers.{i}.{ours}.weight"] = state[f"layers.{i}.{ours}.weight"]
    model.load_state_dict(norms, strict=False, assign=True)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"no packed tensor for {leftover[:5]}")
    model.rotary = Rotary(cfg.head_dim, cfg.rope_theta, max_positions or cfg.max_position_embeddings)
    model.batch_invariant = True  # int8 activations amplify batch-shape noise; see key_lists.py
    model.use_fused_ops()
    return model.eval().requires_grad_(False)


def _cache_path(gguf_path: Path, int4: bool = False) -> Path:
    from adaserve.models.sources import cache_root

    stat = gguf_path.stat()
    name = f"{gguf_path.stem}-{stat.st_size}-{stat.st_mtime_ns}-v{LAYOUT_VERSION}{'-int4' if int4 else ''}"
    return cache_root() / "packed" / f"{name}.safetensors"


def cached_state(gguf_path: str | Path, cfg: ModelConfig, int4: bool = False) -> dict[str, torch.Tensor]:
    """The packed tensors (int4: every matrix requantized to int4): from the cache when it holds
    this file, else decoded and cached."""
    gguf_path = Path(gguf_path)
    path = _cache_path(gguf_path, int4)
    if path.exists():
        try:
            return load_file(str(path))
        except Exception as e:  # a torn or corrupt cache file: decode again
            log.warning("ignoring unreadable packed-weight cache %s: %s", path, e)
    log.info("packing %s for the CPU kernels (once; cached in %s)", gguf_path.name, path.parent)
    state = int4_state(cached_state(gguf_path, cfg)) if int4 else gguf_state(gguf_path, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
    partial.rename(path)
    _release_freed_memory()
    return state


def load_gguf_model(
    gguf_path: str | Path,
    cfg: ModelConfig,
    max_positions: int | None = None,
    num_layers: int | None = None,
    int4: bool = False,
) -> CausalLM:
    """`cfg` comes from the converted model directory (read_model_config); CPU only. int4: every
    matrix requantized to int4 (for a draft). A cached packing that does not build this model
    (missing or misshapen tensors) is packed again."""
    model_cfg = cfg if num_layers is None else ModelConfig(**{**cfg.__dict__, "num_layers": num_layers})
    # The int4 packing is made from the int8 one: a damaged int8 cache spoils both.
    paths = [_cache_path(Path(gguf_path))] + ([_cache_path(Path(gguf_path), True)] if int4 else [])
    from_cache = any(p.exists() for p in paths)
    try:
        return model_from_state(cached_state(gguf_path, cfg, int4), model_cfg, max_positions)
    except (ValueError, RuntimeError, KeyError) as e:
        if not (from_cache and any(p.exists() for p in paths)):
            raise
        log.warning("the packed-weight cache %s does not fit this model (%s): packing again", paths[-1], e)
        for p in paths:
            p.unlink(missing_ok=True)
        return model_from_state(cached_state(gguf_path, cfg, int4), model_cfg, max_positions)


def _release_freed_memory() -> None:
    """Hand the decoding's freed buffers back to the OS (glibc keeps them otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
