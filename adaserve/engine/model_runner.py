"""Turns a scheduler step into model inputs for the target and returns logits per chunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaserve.engine.executor import ModelExecutor
from adaserve.sched.scheduler import ScheduledChunk, SchedulerOutput
from adaserve.spec.tree import TreeLayout


@dataclass
class ForwardOutput:
    # Per chunk: [num_rows, vocab] logits -- all tree nodes when it verifies a tree, the last
    # token when it samples, None for a prefill chunk that does not reach the end of the prompt.
    logits: list[torch.Tensor | None]


def tree_mask(layout: TreeLayout) -> torch.Tensor:
    """[num_nodes, num_nodes] bool: row i sees node i's ancestors and itself."""
    mask = torch.zeros(layout.num_nodes, layout.num_nodes, dtype=torch.bool)
    for i, row in enumerate(layout.mask_rows()):
        mask[i, row] = True
    return mask


class ModelRunner:
    def __init__(self, executor: ModelExecutor) -> None:
        self.executor = executor

    def _seq_input(self, chunk: ScheduledChunk):
        request, start = chunk.request, chunk.start
        if chunk.tree is not None:
            positions = [start + d for d in chunk.tree.depths]
            return self.executor.seq_input(
                request.request_id, chunk.tree.token_ids, positions, chunk.slot_ids, start, tree_mask(chunk.tree)
            )
        n = chunk.num_new_tokens
        token_ids = request.all_ids[start : start + n]
        return self.executor.seq_input(
            request.request_id, token_ids, list(range(start, start + n)), chunk.slot_ids, start
        )

    def run(self, step: SchedulerOutput) -> ForwardOutput:
        seqs = [self._seq_input(c) for c in step.chunks]
        hidden = self.executor.forward(seqs)  # [num_tokens, hidden]
        rows: list[int] = []
        row_counts: list[int] = []
        offset = 0
        for chunk in step.chunks:
            n = chunk.num_new_tokens
            wanted = (
                list(range(offset, offset + n))
                if chunk.tree is not None
                else ([offset + n - 1] if chunk.samples else [])
            )
            rows += wanted
            row_counts.append(len(wanted))
            offset += n
        logits = self.executor.logits(hidden, rows) if rows else hidden.new_zeros(0, 0)
        per_chunk = list(logits.split(row_counts)) if rows else [None] * len(step.chunks)
        return ForwardOutput([x if x.shape[0] else None for x in per_chunk] if rows else per_chunk)
