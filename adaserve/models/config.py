"""Model shape read from a Hugging Face config (Llama and Qwen2 families)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHS = {"llama": False, "qwen2": True}  # model_type -> q/k/v projections have bias


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_hf(cls, hf: Any) -> ModelConfig:
        if hf.model_type not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported model_type {hf.model_type!r}; supported: {sorted(SUPPORTED_ARCHS)}")
        rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"unsupported rope scaling {rope!r}")
        theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        qkv_bias = SUPPORTED_ARCHS[hf.model_type] or bool(getattr(hf, "attention_bias", False))
        if getattr(hf, "mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported")
        eos = hf.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        return cls(
            model_type=hf.model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(theta),
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            eos_token_ids=eos_ids,
        )

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """K and V of all layers for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes
