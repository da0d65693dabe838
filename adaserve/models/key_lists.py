"""Explicit key lists for the batch-invariant attention kernel (adaserve/kernels/attention.cpp).

Each token attends to its sequence's cached positions, then to the step's own positions its chain
or tree lets it see, always in position order, so a token gets the same arithmetic whether it is
decoded alone, verified inside a tree, or prefilled in a chunk.

Worked example, block_size 4: a sequence with blocks [7, 2], 5 cached tokens and a 2-node tree
(node 1 is node 0's child), new slots [9, 10]:
    base slots    positions 0..4 -> [28, 29, 30, 31, 8]
    extra slots   node 0 -> [9];  node 1 -> [9, 10]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaserve.models.attention import SeqSpec


@dataclass
class KeyLists:
    token_seq: torch.Tensor  # [num_tokens] int64: the sequence of each token
    base_offsets: torch.Tensor  # [num_seqs + 1] int64 into base_slots
    base_slots: torch.Tensor  # [sum num_cached] int64: each sequence's cached positions, in order
    extra_offsets: torch.Tensor  # [num_tokens + 1] int64 into extra_slots
    extra_slots: torch.Tensor  # [...] int64: each token's visible positions of this step, in order


def _offsets(counts: list[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def build_key_lists(seqs: list[SeqSpec], block_size: int, device: torch.device | str) -> KeyLists:
    base, extra, extra_counts, token_seq = [], [], [], []
    for i, s in enumerate(seqs):
        table = torch.tensor(s.block_table, dtype=torch.long)
        positions = torch.arange(s.num_cached + s.num_prior)
        slots = table[positions // block_size] * block_size + positions % block_size  # [cached + prior]
        own = torch.cat([slots[s.num_cached :], torch.tensor(s.slot_ids, dtype=torch.long)])  # [prior + new]
        tree = s.tree_mask if s.tree_mask is not None else torch.ones(s.num_new, s.num_new, dtype=torch.bool).tril()
        _, cols = tree.nonzero(as_tuple=True)  # row-major: each token's visible positions, in order
        base.append(slots[: s.num_cached])
        extra.append(own[cols])
        extra_counts.append(tree.sum(dim=1))
        token_seq.append(torch.full((s.num_new,), i, dtype=torch.long))
    lists = KeyLists(
        torch.cat(token_seq),
        _offsets([len(b) for b in base]),
        torch.cat(base),
        _offsets(torch.cat(extra_counts)),
        torch.cat(extra),
    )
    for name, value in vars(lists).items():
        setattr(lists, name, value.to(device))
    return lists
