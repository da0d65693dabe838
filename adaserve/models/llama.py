"""Llama / Qwen2 decoder over a flattened batch of tokens with a paged KV cache.

One `forward` serves prefill chunks, decode tokens and token trees of many requests: tokens come
flattened (`[num_tokens]`), each with its own position, and `AttentionMetadata` says which cached
and new tokens each one attends to. Qwen2 differs from Llama only by the q/k/v bias (and an untied
lm_head, which is just a config flag).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaserve.models.attention import AttentionGroup, AttentionMetadata
from adaserve.models.config import ModelConfig


class KVCache:
    """K and V for every layer: [num_layers, num_blocks, block_size, num_kv_heads, head_dim]."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, dtype, device) -> None:
        shape = (cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.block_size = block_size
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def copy_slots(self, src_slots: list[int], dst_slots: list[int]) -> None:
        """Move K/V entries between slots in all layers (commit of accepted tree tokens)."""
        src = torch.tensor(src_slots, device=self.k.device)
        dst = torch.tensor(dst_slots, device=self.k.device)
        for cache in (self.k, self.v):
            flat = cache.view(cache.shape[0], -1, *cache.shape[3:])  # [layers, slots, kv_heads, d]
            flat[:, dst] = flat[:, src]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = None  # the C++ kernels' fused ops (CausalLM.use_fused_ops), else torch's

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x); with a residual, (norm(x + residual), x + residual), in place under the C++ ops."""
        if self.ops is not None:
            if residual is None:
                return self.ops.rms_norm(x, self.weight, self.eps)
            self.ops.add_rms_norm_(x, residual, self.weight, self.eps)
            return x, residual
        if residual is not None:
            residual = x = x + residual
        # One fused op; bitwise equal to HF's x * rsqrt(mean(x^2) + eps) * weight in fp32.
        out = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)
        return out if residual is None else (out, residual)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float, max_positions: int) -> None:
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        inv_freq = 1.0 / (theta**exponents)  # [head_dim / 2]
        freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
        # HF rotates by x*cos + cat(-x2, x1)*sin. We use roll(x) = cat(x2, x1) and fold the sign
        # into sin: cat(-sin, sin). Negation is exact, so the result is bitwise the same.
        self.register_buffer("cos", torch.cat([freqs, freqs], dim=-1).cos(), persistent=False)
        self.register_buffer("signed_sin", torch.cat([-freqs.sin(), freqs.sin()], dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [num_tokens, 1, head_dim] each, broadcast over heads
        return self.cos[positions].unsqueeze(1), self.signed_sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: [num_tokens, heads, head_dim]; cos and signed_sin fp32 (the result is cast back to x's dtype)."""
    return (x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        self.ops = None  # as RMSNorm.ops

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv: KVCache) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [num_tokens, (heads + 2 * kv_heads) * head_dim]
        q, k, v = self._rotated_qkv(qkv, cos, sin)
        k_cache, v_cache = kv.k[self.layer_idx], kv.v[self.layer_idx]  # [blocks, bs, kv_heads, d]
        k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, meta.slot_mapping, v)
        if meta.keys is not None:
            out = self._attend_invariant(q, k_cache, v_cache, meta.keys)
        elif len(meta.groups) == 1:
            out = self._attend(q, k_cache, v_cache, meta.groups[0])
        else:
            out = q.new_empty(num_tokens, self.num_heads * self.head_dim)
            for group in meta.groups:
                out[group.token_ids] = self._attend(q[group.token_ids], k_cache, v_cache, group)
        return self.o_proj(out)  # [num_tokens, hidden]

    def _rotated_qkv(self, qkv: torch.Tensor, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [num_tokens, heads, d], k and v [num_tokens, kv_heads, d]; q and k rotated (q and k
        heads in one go, in place in qkv under the C++ ops)."""
        num_tokens, num_qk_heads, d = qkv.shape[0], self.num_heads + self.num_kv_heads, self.head_dim
        if self.ops is not None:
            self.ops.rotary_(qkv, num_qk_heads, d, cos, sin)
            qk = qkv[:, : num_qk_heads * d].view(num_tokens, num_qk_heads, d)
        else:
            qk = apply_rotary(qkv[:, : num_qk_heads * d].view(num_tokens, num_qk_heads, d), cos, sin)
        v = qkv[:, num_qk_heads * d :].view(num_tokens, self.num_kv_heads, d)
        return qk[:, : self.num_heads], qk[:, self.num_heads :], v

    def _attend_invariant(self, q: torch.Tensor, k_cache, v_cache, keys) -> torch.Tensor:
        """q [num_tokens, heads, d] -> [num_tokens, heads * d], each row independent of the batch."""
        from adaserve.kernels import qgemm

        flat_k, flat_v = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
        return (
            qgemm()
            .paged_attention(
                q.float(),
                flat_k,
                flat_v,
                keys.token_seq,
                keys.base_offsets,
                keys.base_slots,
                keys.extra_offsets,
                keys.extra_slots,
                self.head_dim**-0.5,
            )
            .to(q.dtype)
        )

    def _attend(self, q: torch.Tensor, k_cache, v_cache, group: AttentionGroup) -> torch.Tensor:
        """q [group_tokens, heads, d] -> [group_tokens, heads * d]."""
        num_seqs = group.block_tables.shape[0]
        keys, values = self._read_kv(k_cache, group), self._read_kv(v_cache, group)  # [num_seqs, kv, kv_heads, d]
        # [num_seqs, max_q, heads, d]; without padding the group's tokens already are that layout
        queries = (
            q.view(num_seqs, -1, self.num_heads, self.head_dim) if group.query_index is None else q[group.query_index]
        )
        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=group.mask,
            is_causal=group.causal,
            enable_gqa=True,
        )  # [num_seqs, heads, max_q, d]
        out = out.transpose(1, 2).reshape(-1, self.num_heads * self.head_dim)
        return out if group.token_index is None else out[group.token_index]

    def _read_kv(self, cache: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
        """[num_seqs, kv_len, kv_heads, d]: each sequence's keys or values."""
        if group.kv_start_slot is not None:  # one sequence in consecutive blocks: a view, no copy
            flat = cache.view(-1, self.num_kv_heads, self.head_dim)
            return flat[group.kv_start_slot : group.kv_start_slot + group.kv_len].unsqueeze(0)
        gathered = cache[group.block_tables].view(group.block_tables.shape[0], -1, self.num_kv_heads, self.head_dim)
        return gathered[:, : group.kv_len]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.ops = None  # as RMSNorm.ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [num_tokens, 2 * intermediate]
        if self.ops is not None:
            return self.down_proj(self.ops.silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, residual, cos, sin, meta: AttentionMetadata, kv: KVCache):
        """-> (this layer's MLP output, the residual stream before it); their sum is the layer's
        output, added by the next norm (vLLM's layout, which lets add and norm be one op)."""
        x, residual = (self.input_layernorm(x), x) if residual is None else self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, meta, kv)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, max_positions or cfg.max_position_embeddings)
        # Batch-invariant attention (explicit key lists) instead of SDPA groups: needed where small
        # numeric differences get amplified, as by quantizing activations (the GGUF kernels).
        self.batch_invariant = False

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv: KVCache
    ) -> torch.Tensor:
        """input_ids, positions: [num_tokens] -> final hidden states [num_tokens, hidden]."""
        x, residual = self.embed_tokens(input_ids), None
        cos, sin = self.rotary(positions)
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, meta, kv)
        return self.norm(x) if residual is None else self.norm(x, residual)[0]

    def use_fused_ops(self) -> None:
        """Run norms, residual adds, rotary and SiLU gating as the C++ kernels' fused ops (CPU, fp32)."""
        from adaserve.kernels import qgemm

        for module in self.modules():
            if isinstance(module, (RMSNorm, Attention, MLP)):
                module.ops = qgemm()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # [n, vocab]
