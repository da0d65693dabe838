"""Batch-invariant attention: explicit key lists, same result alone or in any batch, close to SDPA."""

import torch
import torch.nn.functional as F

from adaserve.kernels import qgemm
from adaserve.models.attention import SeqSpec
from adaserve.models.key_lists import build_key_lists

BLOCK, HEADS, KV_HEADS, DIM = 4, 4, 2, 32


def attend(seqs, q, k_cache, v_cache):
    keys = build_key_lists(seqs, BLOCK, "cpu")
    return qgemm().paged_attention(
        q,
        k_cache,
        v_cache,
        keys.token_seq,
        keys.base_offsets,
        keys.base_slots,
        keys.extra_offsets,
        keys.extra_slots,
        DIM**-0.5,
    )


def caches(num_slots=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_slots, KV_HEADS, DIM, generator=g), torch.randn(num_slots, KV_HEADS, DIM, generator=g)


def test_key_lists_follow_the_worked_example():
    tree = torch.tensor([[True, False], [True, True]])
    keys = build_key_lists([SeqSpec([7, 2], [9, 10], 5, tree)], BLOCK, "cpu")
    assert keys.base_slots.tolist() == [28, 29, 30, 31, 8]
    assert keys.extra_slots.tolist() == [9, 9, 10] and keys.extra_offsets.tolist() == [0, 1, 3]


def test_matches_sdpa_on_a_causal_chain():
    k_cache, v_cache = caches()
    q = torch.randn(6, HEADS, DIM)
    seq = SeqSpec([0, 1, 2], list(range(3, 9)), 3)  # 3 cached, 6 new at slots 3..8
    out = attend([seq], q, k_cache, v_cache).view(6, HEADS, DIM)
    keys, values = k_cache[:9].repeat_interleave(2, 1), v_cache[:9].repeat_interleave(2, 1)
    mask = torch.ones(6, 9, dtype=torch.bool).tril(diagonal=3)
    ref = F.scaled_dot_product_attention(
        q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask
    ).transpose(0, 1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_a_token_gets_the_same_bits_alone_in_a_tree_or_in_a_busy_batch():
    k_cache, v_cache = caches()
    q = torch.randn(8, HEADS, DIM)
    # A tree of 3 nodes after 5 cached tokens: 0 -> 1, 0 -> 2; node 2 sees cached + nodes 0, 2.
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    tree_seq = SeqSpec([0, 1, 2], [5, 6, 7], 5, tree)
    other = SeqSpec([5, 6, 7], [24, 25, 26, 27, 28], 4)  # another request's prefill chunk
    batched = attend([other, tree_seq], torch.cat([q[3:8], q[:3]]), k_cache, v_cache)
    alone_tree = attend([tree_seq], q[:3], k_cache, v_cache)
    assert torch.equal(batched[5:], alone_tree)
    # Node 2 verified as a chain of its own path (node 0 then node 2): same keys, same order, same bits.
    chain = SeqSpec([0, 1, 2], [5, 7], 5, torch.tensor([[1, 0], [1, 1]], dtype=torch.bool))
    assert torch.equal(attend([chain], q[[0, 2]], k_cache, v_cache)[1], alone_tree[2])
