"""Assemble the target (model, KV cache, tokenizer) and the optional draft side from a config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from adaserve.config import DTYPE_ALIASES, EngineConfig
from adaserve.engine.executor import ModelExecutor
from adaserve.kv.manager import KVCacheManager
from adaserve.models.config import ModelConfig
from adaserve.models.gguf_loader import load_gguf_model
from adaserve.models.llama import CausalLM
from adaserve.models.loader import load_model, read_model_config
from adaserve.models.sources import fp32_weights, gguf_source, resolve_model
from adaserve.spec.proposers import DraftModelProposer, NgramProposer, Proposer

log = logging.getLogger(__name__)
MAX_TREE_DEPTH = 64  # rotary tables cover max_model_len + this (tree positions run past the end)
MAX_TREE_TOKENS = 64  # the draft KV room per request: any policy may draft up to this many nodes


@dataclass
class Target:
    model_dir: Path
    model_config: ModelConfig
    tokenizer: object
    max_model_len: int
    executor: ModelExecutor
    weights: str  # "gguf" or "fp32": what the model runs on (see weight_format)


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def weight_format(config: EngineConfig, model_dir: Path) -> str:
    """'gguf' (quantized kernels) or 'fp32' for this model, from config.weights."""
    source, on_cpu = gguf_source(model_dir), torch.device(config.device).type == "cpu"
    if config.weights == "fp32":
        return "fp32"
    if config.weights == "gguf":
        if source is None:
            raise ValueError(f"--weights gguf: {model_dir} did not come from a GGUF file (use --weights fp32)")
        if not on_cpu:
            raise ValueError(f"--weights gguf runs on the CPU kernels only; use --weights fp32 on {config.device}")
        return "gguf"
    if source is None or not on_cpu:
        return "fp32"
    try:
        from adaserve.kernels import qgemm

        qgemm()
    except Exception as e:  # no compiler: still serve, slower
        log.warning("quantized CPU kernels unavailable (%s: %s); running fp32 weights", type(e).__name__, e)
        return "fp32"
    return "gguf"


def activation_dtype(config: EngineConfig, weights: str) -> torch.dtype:
    """What activations (and the KV cache) are computed in, for weights in format `weights`."""
    name = DTYPE_ALIASES.get(config.dtype, config.dtype)
    if weights == "gguf":
        if name == "bfloat16":
            raise ValueError(
                "--dtype bf16 needs --weights fp32: the GGUF kernels quantize activations to int8 "
                "and keep float32 around them"
            )
        return torch.float32
    if name == "auto":
        name = "bfloat16" if _native_bf16(torch.device(config.device)) else "float32"
    return getattr(torch, name)


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    from adaserve.kernels import cpu_flags

    return "avx512_bf16" in cpu_flags()  # AMX CPUs have it too


def load_weights(
    config: EngineConfig, model_dir: Path, max_positions: int, num_layers: int | None = None, int4: bool = False
) -> tuple[CausalLM, str]:
    """The model in the format weight_format picks, and that format (int4: GGUF matrices all int4)."""
    fmt = weight_format(config, model_dir)
    if fmt == "gguf":
        cfg = read_model_config(model_dir)
        return load_gguf_model(gguf_source(model_dir), cfg, max_positions, num_layers, int4), fmt
    device, dtype = torch.device(config.device), activation_dtype(config, fmt)
    model_dir = fp32_weights(model_dir)
    return load_model(model_dir, device, dtype, max_positions, config.cpu_packed_linear, num_layers), fmt


def build_target(config: EngineConfig) -> Target:
    model_dir = resolve_model(config.model)
    device, dtype = torch.device(config.device), activation_dtype(config, weight_format(config, model_dir))
    model_config = read_model_config(model_dir)
    bytes_per_block = model_config.kv_bytes_per_token(dtype.itemsize) * config.block_size
    num_blocks = config.kv_cache_memory // bytes_per_block
    if num_blocks < 1:
        raise ValueError(f"--kv-cache-memory {config.kv_cache_memory} B holds no block ({bytes_per_block} B)")
    kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
    model_max = config.max_model_len or model_config.max_position_embeddings
    max_model_len = min(model_max, kv.capacity_tokens)
    if max_model_len < model_max:
        log.warning("max_model_len %d capped to the KV cache capacity %d", model_max, max_model_len)
    model, weights = load_weights(config, model_dir, max_model_len + MAX_TREE_DEPTH)
    executor = ModelExecutor(model, kv, dtype, device)
    return Target(model_dir, model_config, _load_tokenizer(model_dir), max_model_len, executor, weights)


def build_draft_executor(config: EngineConfig, target: Target) -> ModelExecutor | None:
    """The draft model with its own KV cache (None for no draft or the n-gram proposer)."""
    if config.draft is None or config.draft == "ngram":
        return None
    draft_dir = resolve_model(config.draft)
    device, dtype = torch.device(config.device), activation_dtype(config, weight_format(config, draft_dir))
    draft_config = read_model_config(draft_dir)
    check_same_vocabulary(target, draft_dir, draft_config)
    bs = config.block_size
    # Everything the target holds, plus every request's largest draft tree.
    num_blocks = target.executor.kv.pool.num_blocks + config.max_num_seqs * (-(-MAX_TREE_TOKENS // bs) + 1)
    max_positions = target.max_model_len + MAX_TREE_DEPTH
    model, _ = load_weights(config, draft_dir, max_positions, config.draft_num_layers, config.draft_int4)
    return ModelExecutor(model, KVCacheManager(num_blocks, bs, config.enable_prefix_caching), dtype, device)


def build_proposer(config: EngineConfig, draft: ModelExecutor | None) -> Proposer | None:
    """What drafts candidate trees: the draft model, n-gram lookup ("ngram"), or nothing."""
    if config.draft is None:
        return None
    if config.draft == "ngram":
        return NgramProposer()
    return DraftModelProposer(draft)


def check_same_vocabulary(target: Target, draft_dir: Path, draft_config: ModelConfig) -> None:
    """Draft token ids must mean the same tokens as the target's."""
    draft_vocab = _load_tokenizer(draft_dir).get_vocab()
    if draft_vocab != target.tokenizer.get_vocab():
        raise ValueError(
            f"draft {draft_dir} has a different tokenizer vocabulary than the target {target.model_dir} "
            f"({len(draft_vocab)} vs {len(target.tokenizer.get_vocab())} tokens); speculation needs a shared one"
        )
    if draft_config.vocab_size != target.model_config.vocab_size:
        raise ValueError(
            f"draft vocab_size {draft_config.vocab_size} != target vocab_size {target.model_config.vocab_size}"
        )
