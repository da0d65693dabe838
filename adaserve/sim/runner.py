"""The simulated runner: EngineCore's target pass replaced by the cost model's latency for it, on
a simulated clock. Each step advances the clock by the draft passes the proposer ran plus one target
pass over the step's sequences, each pass described as the engine's step log describes it
(adaserve.engine.step_log.pass_record) and predicted as a logged pass is
(adaserve.sim.step_timing.pass_terms, then the config's PassCorrection):

    step ms = (sum(draft pass ms) + target pass ms) x time_scale + host(logits rows)

Verification is the engine's own greedy acceptance walk over the target's choices that the
proposer drew from the acceptance model (adaserve.sim.proposer.SimProposer).
"""

from __future__ import annotations

from adaserve.engine.runner import ChunkResult, RunnerOutput
from adaserve.engine.step_log import PassRecord, pass_record
from adaserve.kv.manager import KVCacheManager
from adaserve.sched.cost_model import CostModel
from adaserve.sched.scheduler import ScheduledChunk, SchedulerOutput
from adaserve.sim.config import SimConfig
from adaserve.sim.proposer import SimProposer
from adaserve.sim.step_timing import HostModel, pass_terms
from adaserve.spec.verify import Acceptance, accept_greedy

SYNTHETIC_TOKEN = 0  # every prompt and sampled token: the simulator has no text


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SimRunner:
    tokenizer = None
    vocab_size = SYNTHETIC_TOKEN + 1
    eos_token_ids: set[int] = set()
    step_log = None
    max_tree_tokens = None

    def __init__(self, config: SimConfig, cost: CostModel, clock: SimClock, proposer: SimProposer | None) -> None:
        self.config, self.cost, self.clock, self.proposer = config, cost, clock, proposer
        self.host = HostModel(config.step_overhead_ms, config.host_ms_per_target_row, config.host_ms_per_draft_row)
        self.kv = KVCacheManager(max(1, config.kv_capacity_tokens // config.block_size), config.block_size)
        self.max_model_len = self.kv.capacity_tokens

    def load_cost_model(self, refresh: bool = False) -> CostModel:
        return self.cost

    def free(self, request_id: str) -> None:
        pass

    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        draft_passes = self.proposer.take_passes() if self.proposer is not None else []
        self.clock.now += self._step_ms(step, draft_passes) / 1000.0
        return RunnerOutput([ChunkResult(self._accept(c)) for c in step.chunks])

    def _accept(self, chunk: ScheduledChunk) -> Acceptance | None:
        if chunk.tree is not None:
            return accept_greedy(chunk.tree, self.proposer.target_choices(chunk.request.request_id, chunk.tree))
        return Acceptance([], SYNTHETIC_TOKEN) if chunk.samples else None

    def _step_ms(self, step: SchedulerOutput, draft_passes: list[PassRecord]) -> float:
        draft_ms = sum(self.config.draft_pass(pass_terms(self.cost, p)) for p in draft_passes)
        num_draft_rows = sum(p.num_logit_rows for p in draft_passes)
        # Logits: one row per sampling sequence, and every node of a verified tree.
        num_target_rows = sum(c.tree.num_nodes if c.tree is not None else int(c.samples) for c in step.chunks)
        verify = pass_record("target", [(c.num_new_tokens, c.start) for c in step.chunks], num_target_rows)
        verify_ms = self.config.target_pass(pass_terms(self.cost, verify))
        return (draft_ms + verify_ms) * self.config.time_scale + self.host(num_target_rows, num_draft_rows)
