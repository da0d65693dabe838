"""What EngineCore needs from whatever runs the target model: the interface between the one step
loop and a backend. Two implement it: adaserve.engine.model_runner.ModelRunner (the models, on
this machine) and adaserve.sim.runner.SimRunner (a cost model and an acceptance model, on a
simulated clock). Plain data; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from adaserve.kv.manager import KVCacheManager
from adaserve.sched.cost_model import CostModel
from adaserve.sched.scheduler import SchedulerOutput
from adaserve.spec.verify import Acceptance

if TYPE_CHECKING:
    from adaserve.engine.logits_process import TokenLogprob
    from adaserve.engine.step_log import StepLog
    from adaserve.spec.proposers import Proposer


@dataclass
class ChunkResult:
    """What the target made of one scheduled chunk.

    acceptance: a tree chunk's accepted path and bonus token; a chunk that reaches its request's
                last token (a decode, or the end of a prompt) samples one token, its bonus token;
                None for a prefill chunk short of the end of the prompt (nothing to sample).
    error:      set instead when this request failed (the step goes on for the others).
    """

    acceptance: Acceptance | None = None
    error: str | None = None
    # The target's log-probabilities of the new tokens (accepted drafts, then the bonus token),
    # when the request asked for them.
    logprobs: list[TokenLogprob] | None = None


@dataclass
class RunnerOutput:
    results: list[ChunkResult]  # aligned with the step's chunks


class Runner(Protocol):
    kv: KVCacheManager  # the target's KV blocks (the scheduler allocates them)
    max_model_len: int
    vocab_size: int
    eos_token_ids: set[int]
    tokenizer: object | None  # None: no text (the simulator's synthetic tokens)
    proposer: Proposer | None  # the draft side: a draft model, n-gram lookup or the simulator's offers
    max_tree_tokens: int | None  # drafted nodes per request the draft side has room for (None: any)
    step_log: StepLog | None  # traces every pass when set

    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        """One target pass over the step's chunks (trees attached), then per chunk the sampled
        token or the tree's acceptance; accepted tree nodes' KV is moved to its final positions."""
        ...

    def free(self, request_id: str) -> None:
        """The request finished: drop what the runner keeps for it (e.g. its sampling generator)."""
        ...

    def load_cost_model(self, refresh: bool = False) -> CostModel:
        """The latency model of this backend's passes (profiled, cached or given)."""
        ...
