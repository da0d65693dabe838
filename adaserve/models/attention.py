"""Attention inputs for a flattened batch: which cache slots each token writes and reads.

One forward serves prefill chunks, decode tokens and token trees of many requests at once. Tokens
are flattened request by request; attention runs on a padded [num_seqs, max_q_len] view of them
against each request's KV, gathered block-wise from the paged cache.

Worked example, block_size 4: request a has 5 tokens cached and feeds 2 new ones (decode-like
chain), request b has 0 cached and feeds 3 (a prefill chunk).
    flattened tokens       a5 a6 b0 b1 b2                 num_tokens = 5
    block tables           a: [7, 2]   b: [4, 0(pad)]     -> block_tables [2, 2]
    slot_mapping           a5 -> 2*4+1 = 9, a6 -> 10, b0 -> 16, b1 -> 17, b2 -> 18
    query_index [2, 3]     [[0, 1, 0(pad)], [2, 3, 4]]
    token_index [5]        [0, 1, 3, 4, 5]  (row-major positions in the padded [2, 3] view)
    mask [2, 1, 3, 8]      a: query j sees kv 0..4 and new 5..5+j;  b: causal over 0..2
A padded query row attends only to kv position 0, so softmax stays finite; its output is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SeqSpec:
    """One request's part of a step: new tokens after `num_cached` tokens that all of them see.

    With a tree, `tree_mask` [num_new, num_prior + num_new] says which of the positions from
    num_cached on each new token sees: `num_prior` speculative tokens already in the cache (an
    earlier draft layer), then the new tokens themselves. None = a causal chain, no prior.
    """

    block_table: list[int]
    slot_ids: list[int]  # one per new token, at positions num_cached + num_prior + i
    num_cached: int
    tree_mask: torch.Tensor | None = None

    @property
    def num_new(self) -> int:
        return len(self.slot_ids)

    @property
    def num_prior(self) -> int:
        return 0 if self.tree_mask is None else self.tree_mask.shape[1] - self.num_new


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot each new K/V is written to
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, padded with block 0
    # [num_seqs, max_q_len] int64, flat token of each padded query; None when nothing is padded
    query_index: torch.Tensor | None
    token_index: torch.Tensor | None  # [num_tokens] int64, padded position of each flat token
    # [num_seqs, 1, max_q_len, max_blocks * block_size] additive float mask: 0 = attend, -inf = not.
    # Built once per step as floats so the layers don't convert a bool mask each time.
    # None: every query sees every key (one sequence decoding one token).
    mask: torch.Tensor | None
    # One sequence only: the exact number of KV positions it reads, and, when its blocks are
    # consecutive, its first cache slot (the layers then read the cache in place, no gather).
    kv_len: int | None = None
    kv_start_slot: int | None = None


def build_attention_metadata(
    seqs: list[SeqSpec], block_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> AttentionMetadata:
    num_seqs = len(seqs)
    max_q = max(s.num_new for s in seqs)
    max_blocks = max(len(s.block_table) for s in seqs)
    max_kv = max_blocks * block_size
    block_tables = torch.zeros(num_seqs, max_blocks, dtype=torch.long)
    query_index = torch.zeros(num_seqs, max_q, dtype=torch.long)
    mask = torch.zeros(num_seqs, 1, max_q, max_kv, dtype=torch.bool)
    token_index, slot_mapping = [], []
    flat = 0
    for i, s in enumerate(seqs):
        n, c = s.num_new, s.num_cached
        if c + s.num_prior + n > len(s.block_table) * block_size:
            raise ValueError("block table too short for cached + new tokens")
        block_tables[i, : len(s.block_table)] = torch.tensor(s.block_table, dtype=torch.long)
        query_index[i, :n] = torch.arange(flat, flat + n)
        token_index.extend(range(i * max_q, i * max_q + n))
        slot_mapping.extend(s.slot_ids)
        mask[i, 0, :n, :c] = True
        mask[i, 0, n:, 0] = True  # padded query rows see kv 0 only
        tree = s.tree_mask if s.tree_mask is not None else torch.ones(n, n, dtype=torch.bool).tril()
        mask[i, 0, :n, c : c + tree.shape[1]] = tree
        flat += n
    padded = flat != num_seqs * max_q
    if num_seqs == 1:
        return _single_sequence(seqs[0], block_tables, mask, slot_mapping, block_size, device, dtype)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
        block_tables=block_tables.to(device),
        query_index=query_index.to(device) if padded else None,
        token_index=torch.tensor(token_index, dtype=torch.long, device=device) if padded else None,
        mask=_float_mask(mask, dtype).to(device),
    )


def _single_sequence(s: SeqSpec, block_tables, mask, slot_mapping, block_size, device, dtype) -> AttentionMetadata:
    """Batch of one (batch-1 decoding, a draft's chain): read exactly the KV it needs, in place
    when its blocks are consecutive; no mask at all for a single decode token.
    Worked example, block_size 4, 5 cached + 1 new, blocks [7, 8]: kv_len 6, kv_start_slot 28."""
    kv_len = s.num_cached + s.num_prior + s.num_new
    blocks = s.block_table[: -(-kv_len // block_size)]
    consecutive = blocks == list(range(blocks[0], blocks[0] + len(blocks)))
    decode = s.num_new == 1 and s.tree_mask is None
    float_mask = None if decode else _float_mask(mask[..., :kv_len], dtype).to(device)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
        block_tables=block_tables.to(device),
        query_index=None,
        token_index=None,
        mask=float_mask,
        kv_len=kv_len,
        kv_start_slot=blocks[0] * block_size if consecutive else None,
    )


def _float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))
