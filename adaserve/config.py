"""Frozen engine configuration. Plain data; no torch."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
WEIGHT_FORMATS = ("auto", "gguf", "fp32")
# Activation dtypes: "auto" is bfloat16 for fp32 weights where the hardware computes bf16 natively
# (CPUs with avx512_bf16 or AMX, CUDA), else float32; GGUF kernels always take float32.
DTYPES = ("auto", "float32", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass(frozen=True)
class EngineConfig:
    model: str = "smollm2-135m"
    device: str = "cpu"
    dtype: str = "float32"  # one of DTYPES (or an alias: fp32, bf16)
    # KV cache: total bytes for K and V of all layers; split into blocks of `block_size` tokens.
    kv_cache_memory: int = 512 * MiB
    block_size: int = 16
    # Automatic prefix caching: full KV blocks are shared between requests with the same prefix.
    enable_prefix_caching: bool = True
    # Per-step limits (continuous batching with chunked prefill).
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    # None: the model's max_position_embeddings.
    max_model_len: int | None = None
    # "gguf": keep a GGUF model's weights quantized (int4/int8 qgemm kernels, CPU); "fp32": dequantize
    # them; "auto": gguf for GGUF models on CPU, else fp32.
    weights: str = "auto"
    # Pack linear weights for oneDNN on CPU (2-2.6x faster for small token counts here).
    cpu_packed_linear: bool = True
    num_threads: int | None = None
    seed: int = 0
    # Speculative decoding: a draft model (preset, path...) or "ngram"; and the policy
    # (adaserve.spec.registry: none, chunked, chain:K, static-tree, dynamic-tree, smartspec,
    # adaserve, adaserve-equal).
    draft: str | None = None
    spec_policy: str = "none"
    draft_num_layers: int | None = None  # keep only the draft's first layers (a cheap weak draft)
    # Requantize a GGUF draft's int8 matrices to int4: a draft pass reads about half the bytes, and
    # the draft only proposes, so the output stays the target's (Qwen pair, HumanEval: 1.14x chain:4
    # tokens/s, acceptance 4.81 vs 4.85 per verification; docs/engine.md). GGUF drafts on CPU only.
    draft_int4: bool = True
    # Profiled cost model JSON (`adaserve profile`); None: this pair's cached profile, or profile
    # at start-up when a policy needs one (chunked, smartspec, adaserve, adaserve-equal).
    cost_model: str | None = None
    # Append a JSON line per step (its passes' shapes and times) to this file: adaserve.engine.step_log.
    step_log: str | None = None

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.kv_cache_memory <= 0:
            raise ValueError("block_size and kv_cache_memory must be positive")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if DTYPE_ALIASES.get(self.dtype, self.dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES} (or fp32, bf16), not {self.dtype!r}")
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, not {self.weights!r}")


def parse_memory(text: str | int) -> int:
    """'512MiB', '2GiB', '1.5G', '300M' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(float(s))
