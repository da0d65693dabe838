"""Turns a scheduler step into tensors, runs the model, returns logits of the sampling tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaserve.kv.manager import KVCacheManager
from adaserve.models.attention import SeqSpec, build_attention_metadata
from adaserve.models.llama import CausalLM, KVCache
from adaserve.sched.scheduler import SchedulerOutput


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [num_sampling_chunks, vocab], one row per chunk that samples
    sampling_chunk_ids: list[int]  # index into SchedulerOutput.chunks of each logits row


class ModelRunner:
    def __init__(self, model: CausalLM, kv: KVCacheManager, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.kv = kv
        self.device = device
        self.kv_cache = KVCache(model.cfg, kv.pool.num_blocks, kv.block_size, dtype, device)

    @torch.inference_mode()
    def run(self, step: SchedulerOutput) -> ForwardOutput:
        input_ids: list[int] = []
        positions: list[int] = []
        seqs: list[SeqSpec] = []
        last_token_index: list[int] = []
        sampling_chunk_ids: list[int] = []
        for i, chunk in enumerate(step.chunks):
            start, n = chunk.start, chunk.num_new_tokens
            input_ids.extend(chunk.request.all_ids[start : start + n])
            positions.extend(range(start, start + n))
            block_table = self.kv.block_tables[chunk.request.request_id]
            seqs.append(SeqSpec(block_table, chunk.slot_ids, num_cached=start))
            if chunk.samples:
                last_token_index.append(len(input_ids) - 1)
                sampling_chunk_ids.append(i)
        meta = build_attention_metadata(seqs, self.kv.block_size, self.device)
        hidden = self.model(
            torch.tensor(input_ids, device=self.device),
            torch.tensor(positions, device=self.device),
            meta,
            self.kv_cache,
        )  # [num_tokens, hidden]
        logits = self.model.compute_logits(hidden[torch.tensor(last_token_index, dtype=torch.long, device=self.device)])
        return ForwardOutput(logits.float(), sampling_chunk_ids)
