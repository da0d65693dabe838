"""A model with its own paged KV cache, run on a list of per-request inputs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from adaserve.engine.step_log import PassRecord, StepLog, pass_record
from adaserve.kv.manager import KVCacheManager
from adaserve.models.attention import SeqSpec, build_attention_metadata
from adaserve.models.llama import CausalLM, KVCache


@dataclass
class SeqInput:
    token_ids: list[int]
    positions: list[int]  # rotary positions (a tree node's is context length + depth)
    spec: SeqSpec  # where its K/V go and what it attends to


class ModelExecutor:
    def __init__(self, model: CausalLM, kv: KVCacheManager, dtype: torch.dtype, device: torch.device) -> None:
        self.model = model
        self.kv = kv
        self.device = device
        self.kv_cache = KVCache(model.cfg, kv.pool.num_blocks, kv.block_size, dtype, device)
        self.step_log: StepLog | None = None  # set to trace every pass (adaserve serve --step-log)
        self.name = "target"

    @property
    def max_positions(self) -> int:
        """Positions the model's rotary tables cover (a pass can't reach past them)."""
        return self.model.rotary.cos.shape[0]

    def seq_input(
        self,
        request_id: str,
        token_ids: list[int],
        positions: list[int],
        slot_ids: list[int],
        num_cached: int,
        tree_mask: torch.Tensor | None = None,
    ) -> SeqInput:
        spec = SeqSpec(self.kv.block_tables[request_id], slot_ids, num_cached, tree_mask)
        return SeqInput(token_ids, positions, spec)

    @torch.inference_mode()
    def forward(self, seqs: list[SeqInput]) -> torch.Tensor:
        """-> final hidden states [num_tokens, hidden], sequences concatenated in order."""
        start = time.perf_counter()
        ids = [t for s in seqs for t in s.token_ids]
        positions = [p for s in seqs for p in s.positions]
        meta = build_attention_metadata(
            [s.spec for s in seqs],
            self.kv.block_size,
            self.device,
            self.kv_cache.k.dtype,  # masks in the activations' dtype (SDPA wants them alike)
            invariant=self.model.batch_invariant,
        )
        hidden = self.model(
            torch.tensor(ids, device=self.device), torch.tensor(positions, device=self.device), meta, self.kv_cache
        )
        if self.step_log is not None:
            self.step_log.add_pass(self._pass_record(seqs, 1000.0 * (time.perf_counter() - start)))
        return hidden

    def _pass_record(self, seqs: list[SeqInput], forward_ms: float) -> PassRecord:
        """The pass in the cost model's terms (its logits rows are added as they are computed)."""
        return pass_record(
            self.name, [(s.spec.num_new, s.spec.num_cached + s.spec.num_prior) for s in seqs], 0, forward_ms
        )

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """[num_rows, vocab] fp32 logits of the given hidden rows (all when None)."""
        start = time.perf_counter()
        if rows is not None:
            hidden = hidden[torch.tensor(rows, dtype=torch.long, device=self.device)]
        logits = self.model.compute_logits(hidden).float()
        if self.step_log is not None:
            self.step_log.add_logits(logits.shape[0], 1000.0 * (time.perf_counter() - start))
        return logits
