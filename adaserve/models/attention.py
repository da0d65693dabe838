"""Attention inputs for a flattened batch: which cache slots each token writes and reads.

One forward serves prefill chunks, decode tokens and token trees of many requests at once. Tokens
are flattened request by request. Attention runs per *group* of sequences with similar shapes:
within a group the queries are padded to [num_seqs, max_q_len] and each sequence's KV is gathered
block-wise from the paged cache. Padding one 512-token prefill chunk together with 15 decode tokens
would compute 16 x 512 query rows, so sequences are grouped to keep the padded work close to the
useful work (`group_sequences`).

Worked example, block_size 4: request a has 5 tokens cached and feeds 2 new ones (decode-like
chain), request b has 0 cached and feeds 3 (a prefill chunk); both in one group.
    flattened tokens       a5 a6 b0 b1 b2                 num_tokens = 5
    block tables           a: [7, 2]   b: [4, 0(pad)]     -> block_tables [2, 2]
    slot_mapping           a5 -> 2*4+1 = 9, a6 -> 10, b0 -> 16, b1 -> 17, b2 -> 18
    query_index [2, 3]     [[0, 1, 0(pad)], [2, 3, 4]]
    token_index [5]        [0, 1, 3, 4, 5]  (row-major positions in the padded [2, 3] view)
    mask [2, 1, 3, 7]      a: query j sees kv 0..4 and new 5..5+j;  b: causal over 0..2
A padded query row attends only to kv position 0, so softmax stays finite; its output is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Padded query x key positions a group may waste before a sequence gets a group of its own: half
# the group's useful work (or MIN_WASTE, if more). Padding costs more than it seems: every padded KV
# position is gathered (copied) in every layer, and on CPU that costs more than a separate
# attention call (Qwen2.5-1.5B, 16 decodes over 166..1300 cached tokens: 375 ms per step with
# 16384 positions of slack, 267 ms with none).
MIN_WASTE = 0
WASTE_RATIO = 0.5


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

    @property
    def kv_len(self) -> int:
        return self.num_cached + self.num_prior + self.num_new


@dataclass
class AttentionGroup:
    """Sequences whose attention is one padded call. Indices into q are local to the group."""

    token_ids: torch.Tensor | None  # [group_tokens] flat tokens of the group; None = the whole batch
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, padded with block 0
    # [num_seqs, max_q_len] int64, group token of each padded query; None when nothing is padded
    query_index: torch.Tensor | None
    token_index: torch.Tensor | None  # [group_tokens] int64, padded position of each group token
    # [num_seqs, 1, max_q_len, kv_len] additive float mask: 0 = attend, -inf = not. Built once
    # per step as floats so the layers don't convert a bool mask each time. None: every query
    # sees every key (one sequence decoding one token), or `causal` says it all.
    mask: torch.Tensor | None
    kv_len: int  # KV positions read per sequence (the longest sequence's)
    # One sequence in consecutive blocks: its first cache slot (the layers read the cache in place)
    kv_start_slot: int | None = None
    causal: bool = False  # one fresh causal chain (no cached tokens): SDPA's own causal mask


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot each new K/V is written to
    groups: list[AttentionGroup]
    keys: object | None = None  # models.key_lists.KeyLists: the batch-invariant kernel's inputs (no groups)


def group_sequences(
    shapes: list[tuple[int, int]], min_waste: int = MIN_WASTE, waste_ratio: float = WASTE_RATIO
) -> list[list[int]]:
    """Partition sequences, given as (num_new, kv_len), into groups to attend together.

    Sequences are visited by decreasing (num_new, kv_len); each joins the current group while the
    group's padded work (num_seqs x max num_new x max kv_len) exceeds its useful work
    (sum num_new x kv_len) by at most max(min_waste, waste_ratio x useful).
    Worked example: a 512-token prefill over 512 KV and three decode tokens over 700, 650, 90 KV:
      [prefill] alone (with the first decode: padded 2 x 512 x 700 = 716,800 against 262,844 useful),
      decodes 700 + 650 -> padded 2 x 700 = 1400, useful 1350: together; + 90 -> 2100 vs 1440: together.
    -> [[0], [1, 2, 3]] (each group's indices in their original order).
    """
    order = sorted(range(len(shapes)), key=shapes.__getitem__, reverse=True)
    groups, start = [], 0
    for size in _group_sizes([shapes[i] for i in order], min_waste, waste_ratio):
        groups.append(sorted(order[start : start + size]))
        start += size
    return groups


def _group_sizes(visited: list[tuple[int, int]], min_waste: int, waste_ratio: float) -> list[int]:
    """The group rule over shapes in visiting order (decreasing): each group is a run of them;
    returns the runs' lengths. (The simulator prices every pass's padding with it.)"""
    sizes: list[int] = []
    max_q = max_kv = useful = 0
    for q, kv in visited:
        if sizes:
            # Visited by decreasing num_new, so the group's max_q never grows; kv may (a longer KV
            # with fewer new tokens).
            group_kv = kv if kv > max_kv else max_kv
            work = useful + q * kv
            if (sizes[-1] + 1) * max_q * group_kv - work <= max(min_waste, waste_ratio * work):
                sizes[-1] += 1
                max_kv, useful = group_kv, work
                continue
        sizes.append(1)
        max_q, max_kv, useful = q, kv, q * kv
    return sizes


def num_padded_kv(shapes: list[tuple[int, int]], min_waste: int = MIN_WASTE) -> int:
    """KV positions the attention reads beyond the sequences' own, because a group pads every member
    to its longest KV (a sequence alone reads its cache in place). Shapes as in group_sequences.
    Worked example (group_sequences'): decodes over 700, 650, 90 KV in one group -> 0 + 50 + 610 = 660."""
    if len(shapes) < 2:
        return 0
    visited = sorted(shapes, reverse=True)  # (equal shapes in any order: the same runs)
    padded, start = 0, 0
    for size in _group_sizes(visited, min_waste, WASTE_RATIO):
        if size > 1:
            kvs = [kv for _, kv in visited[start : start + size]]
            padded += max(kvs) * size - sum(kvs)
        start += size
    return padded


def build_attention_metadata(
    seqs: list[SeqSpec],
    block_size: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    min_waste: int = MIN_WASTE,
    invariant: bool = False,
) -> AttentionMetadata:
    """`invariant`: key lists for the batch-invariant kernel instead of SDPA groups."""
    for s in seqs:
        if s.kv_len > len(s.block_table) * block_size:
            raise ValueError("block table too short for cached + new tokens")
    slot_mapping = torch.tensor([slot for s in seqs for slot in s.slot_ids], dtype=torch.long, device=device)
    if invariant:
        from adaserve.models.key_lists import build_key_lists

        return AttentionMetadata(slot_mapping, [], build_key_lists(seqs, block_size, device))
    offsets = [0]  # flat index of each sequence's first token
    for s in seqs:
        offsets.append(offsets[-1] + s.num_new)
    groups = group_sequences([(s.num_new, s.kv_len) for s in seqs], min_waste)
    built = []
    for members in groups:
        group_seqs = [seqs[i] for i in members]
        group = (
            _single_sequence(group_seqs[0], block_size, dtype)
            if len(members) == 1
            else _padded(group_seqs, block_size, dtype)
        )
        if len(groups) > 1:  # one group holds every token in order: no index needed
            group.token_ids = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in members])
        built.append(_to_device(group, device))
    return AttentionMetadata(slot_mapping, built)


def _padded(seqs: list[SeqSpec], block_size: int, dtype: torch.dtype) -> AttentionGroup:
    num_seqs, max_q = len(seqs), max(s.num_new for s in seqs)
    max_kv = max(s.kv_len for s in seqs)
    max_blocks = -(-max_kv // block_size)  # blocks reserved beyond the KV read are not gathered
    block_tables = torch.zeros(num_seqs, max_blocks, dtype=torch.long)
    query_index = torch.zeros(num_seqs, max_q, dtype=torch.long)
    mask = torch.zeros(num_seqs, 1, max_q, max_kv, dtype=torch.bool)
    token_index = []
    flat = 0
    for i, s in enumerate(seqs):
        n = s.num_new
        table = s.block_table[:max_blocks]
        block_tables[i, : len(table)] = torch.tensor(table, dtype=torch.long)
        query_index[i, :n] = torch.arange(flat, flat + n)
        token_index.extend(range(i * max_q, i * max_q + n))
        _fill_mask(mask[i, 0], s)
        mask[i, 0, n:, 0] = True  # padded query rows see kv 0 only
        flat += n
    padded = flat != num_seqs * max_q
    return AttentionGroup(
        token_ids=None,
        block_tables=block_tables,
        query_index=query_index if padded else None,
        token_index=torch.tensor(token_index, dtype=torch.long) if padded else None,
        mask=_float_mask(mask, dtype),
        kv_len=max_kv,
    )


def _single_sequence(s: SeqSpec, block_size: int, dtype: torch.dtype) -> AttentionGroup:
    """A group of one (batch-1 decoding, a prefill chunk, a draft's chain): read exactly the KV it
    needs, in place when its blocks are consecutive; no mask for a single decode token or a fresh
    causal chain. Worked example, block_size 4, 5 cached + 1 new, blocks [7, 8]: kv_len 6,
    kv_start_slot 28."""
    blocks = s.block_table[: -(-s.kv_len // block_size)]
    consecutive = blocks == list(range(blocks[0], blocks[0] + len(blocks)))
    chain = s.tree_mask is None
    causal = chain and s.num_cached == 0 and s.num_new > 1
    mask = None
    if not (chain and s.num_new == 1) and not causal:
        mask = torch.zeros(s.num_new, s.kv_len, dtype=torch.bool)
        _fill_mask(mask, s)
        mask = _float_mask(mask, dtype)[None, None]
    return AttentionGroup(
        token_ids=None,
        block_tables=torch.tensor([blocks], dtype=torch.long),
        query_index=None,
        token_index=None,
        mask=mask,
        kv_len=s.kv_len,
        kv_start_slot=blocks[0] * block_size if consecutive else None,
        causal=causal,
    )


def _fill_mask(mask: torch.Tensor, s: SeqSpec) -> None:
    """mask [>= num_new, >= kv_len] bool: new token j sees the cached prefix and its own tree/chain."""
    n, c = s.num_new, s.num_cached
    mask[:n, :c] = True
    tree = s.tree_mask if s.tree_mask is not None else torch.ones(n, n, dtype=torch.bool).tril()
    mask[:n, c : c + tree.shape[1]] = tree


def _to_device(group: AttentionGroup, device) -> AttentionGroup:
    for name in ("token_ids", "block_tables", "query_index", "token_index", "mask"):
        value = getattr(group, name)
        if value is not None:
            setattr(group, name, value.to(device))
    return group


def _float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))
