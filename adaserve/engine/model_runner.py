"""The models on this machine, as EngineCore's runner (adaserve.engine.runner.Runner): builds the
target and the draft side from the config, turns a scheduled step into one target pass, then samples
or verifies each chunk and moves accepted tree nodes' KV into place."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from adaserve.config import EngineConfig
from adaserve.engine.builder import MAX_TREE_TOKENS, build_draft_executor, build_proposer, build_target
from adaserve.engine.executor import SeqInput
from adaserve.engine.grammar import apply_bitmask
from adaserve.engine.logits_process import process_logits, token_logprobs, tree_paths
from adaserve.engine.profiler import load_or_profile, profile_key
from adaserve.engine.runner import ChunkResult, RunnerOutput
from adaserve.engine.sampler import Sampler, logits_to_probs
from adaserve.engine.step_log import StepLog
from adaserve.kernels import kernel_version
from adaserve.models.sources import resolve_model
from adaserve.sched.cost_model import CostModel
from adaserve.sched.scheduler import ScheduledChunk, SchedulerOutput
from adaserve.spec.tree import TreeLayout
from adaserve.spec.verify import Acceptance, accept_greedy, accept_sampled

log = logging.getLogger(__name__)


def tree_mask(layout: TreeLayout) -> torch.Tensor:
    """[num_nodes, num_nodes] bool: row i sees node i's ancestors and itself."""
    mask = torch.zeros(layout.num_nodes, layout.num_nodes, dtype=torch.bool)
    for i, row in enumerate(layout.mask_rows()):
        mask[i, row] = True
    return mask


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        target = build_target(config)
        self.model_dir, self.model_config, self.tokenizer = target.model_dir, target.model_config, target.tokenizer
        self.max_model_len, self.vocab_size = target.max_model_len, target.model_config.vocab_size
        self.eos_token_ids = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self.executor, self.weights = target.executor, target.weights
        self.kv = self.executor.kv
        self.draft = build_draft_executor(config, target)
        self.proposer = build_proposer(config, self.draft)
        self.max_tree_tokens = MAX_TREE_TOKENS  # the draft's KV room per request
        self.sampler = Sampler(config.seed)
        self.step_log = self._open_step_log(config.step_log)

    def _open_step_log(self, path: str | None) -> StepLog | None:
        """Trace every step's passes (after start-up: profiling passes are not steps)."""
        if path is None:
            return None
        step_log = StepLog(path)
        self.executor.step_log = step_log
        if self.draft is not None:
            self.draft.step_log, self.draft.name = step_log, "draft"
        return step_log

    def load_cost_model(self, refresh: bool = False) -> CostModel:
        """The configured profile, or this model pair's cached one, or profile now (and cache)."""
        config = self.config
        if config.cost_model:
            return CostModel.load(Path(config.cost_model))
        draft_dir = resolve_model(config.draft) if self.draft is not None else None
        key = profile_key(
            self.model_dir, draft_dir, config.draft_num_layers, config.device, self._dtype_name(), self._linear_format()
        )
        meta = {"model": str(self.model_dir), "draft": str(draft_dir) if draft_dir else None, "weights": self.weights}
        meta["kernels"] = kernel_version()  # which profile is this machine's today (find_profile)
        max_tokens = config.max_num_batched_tokens  # steps carry up to this many tokens: measure them
        return load_or_profile(self.executor, self.draft, key, max_tokens, meta, refresh)

    def _dtype_name(self) -> str:
        """The activation dtype as resolved (e.g. "float32"), part of the profile key."""
        return str(self.executor.kv_cache.k.dtype).removeprefix("torch.")

    def _linear_format(self) -> str:
        """What the linear layers run on, part of the profile key."""
        if self.weights == "gguf":
            return "gguf+draft-int4" if self.draft is not None and self.config.draft_int4 else "gguf"
        return "fp32-packed" if self.config.cpu_packed_linear else "fp32"

    def free(self, request_id: str) -> None:
        self.sampler.forget(request_id)

    # -- one step ----------------------------------------------------------------------------
    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        results = []
        for chunk, logits in zip(step.chunks, self._forward(step)):
            try:
                results.append(self._accept(chunk, logits))
            except Exception as e:  # one request's failure must not take the batch down
                log.exception("request %s failed", chunk.request.request_id)
                results.append(ChunkResult(error=f"{type(e).__name__}: {e}"))
        return RunnerOutput(results)

    def _forward(self, step: SchedulerOutput) -> list[torch.Tensor | None]:
        """Per chunk, [num_rows, vocab] logits: every node of a tree it verifies, its last token when
        it samples, None for a prefill chunk short of the end of the prompt."""
        hidden = self.executor.forward([self._seq_input(c) for c in step.chunks])  # [num_tokens, hidden]
        rows: list[int] = []
        row_counts: list[int] = []
        offset = 0
        for chunk in step.chunks:
            n = chunk.num_new_tokens
            if chunk.tree is not None:
                wanted = list(range(offset, offset + n))
            else:
                wanted = [offset + n - 1] if chunk.samples else []
            rows += wanted
            row_counts.append(len(wanted))
            offset += n
        if not rows:
            return [None] * len(step.chunks)
        logits = self.executor.logits(hidden, rows)  # [len(rows), vocab]
        return [x if x.shape[0] else None for x in logits.split(row_counts)]

    def _seq_input(self, chunk: ScheduledChunk) -> SeqInput:
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

    def _accept(self, chunk: ScheduledChunk, logits: torch.Tensor | None) -> ChunkResult:
        """A tree's accepted path (its KV moved into place), or the sampled token as the bonus;
        with their log-probabilities when the request asked for them."""
        request, params = chunk.request, chunk.request.params
        if logits is None:
            return ChunkResult()  # a prefill chunk short of the end of the prompt
        if chunk.tree is None:
            processed = process_logits(logits, params, request.output_ids, [[]])
            if request.grammar is not None:
                processed = apply_bitmask(processed, request.grammar.tree_bitmask([request.all_ids[-1]], [-1]))
            token_id = self.sampler.sample(processed[0], request.request_id, params, request.num_output_tokens)
            acceptance = Acceptance([], token_id)
        else:
            acceptance = self._verify(chunk, logits)
        if params.logprobs is None:
            return ChunkResult(acceptance)
        # The token at accepted depth d was predicted after the node at depth d - 1 (the root first).
        rows = [0] + acceptance.accepted_nodes
        tokens = [chunk.tree.token_ids[n] for n in acceptance.accepted_nodes] if chunk.tree else []
        tokens.append(acceptance.bonus_token_id)
        return ChunkResult(acceptance, logprobs=token_logprobs(logits, rows, tokens, params.logprobs))

    def _verify(self, chunk: ScheduledChunk, logits: torch.Tensor) -> Acceptance:
        """logits [num_nodes, vocab] -> the accepted path; its KV moved into place."""
        request, params, layout = chunk.request, chunk.request.params, chunk.tree
        logits = process_logits(logits, params, request.output_ids, tree_paths(layout.token_ids, layout.parents))
        if request.grammar is not None:  # each node's row masked by the grammar after its path
            logits = apply_bitmask(logits, request.grammar.tree_bitmask(layout.token_ids, layout.parents))
        if params.greedy:
            acceptance = accept_greedy(layout, logits.argmax(-1).tolist())
        else:
            num_positions = max(layout.depths) + 1  # (the token after each depth's nodes)
            uniforms = self.sampler.uniforms(request.request_id, params, request.num_output_tokens, num_positions)
            acceptance = accept_sampled(layout, logits_to_probs(logits, params).cpu(), uniforms)
        # Node i of the tree was written at slot_ids[i] (position start + i); the accepted node at
        # depth d belongs at position start + d, slot_ids[d]. Sources are never behind their
        # targets, so one copy is safe. Worked example: accepted nodes [2, 5] (depths 1, 2) move
        # from slots [s2, s5] to [s1, s2].
        src = [chunk.slot_ids[i] for i in acceptance.accepted_nodes]
        dst = chunk.slot_ids[1 : 1 + len(src)]
        if src != dst:
            self.executor.kv_cache.copy_slots(src, dst)
        return acceptance
