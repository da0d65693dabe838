"""Request state, shared by scheduler and engine. Plain Python; no torch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from adaserve.sampling import SamplingParams
from adaserve.spec.stats import SpecStats


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # eos, stop token or stop string
    LENGTH = "length"  # max_tokens or max_model_len
    ABORT = "abort"  # cancelled by the caller
    ERROR = "error"
    REFUSED = "refused"  # its SLO could not be met and it asked to be refused (slo_policy "reject")


@dataclass(eq=False)  # a request is itself: queues find and remove it by identity
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival_time: float
    output_ids: list[int] = field(default_factory=list)
    # Tokens whose KV is in the cache. A preempted request drops back to 0 and recomputes.
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # one per output token
    num_preemptions: int = 0
    # Prompt tokens found in the prefix cache when it arrived (the planner's prefill estimate).
    num_cached_hint: int = 0
    # Its SLO became unattainable: still served, after every request that can meet its own.
    best_effort: bool = False
    # The stop string or stop token id it ended on (None for eos, max_tokens, or not yet).
    stop_reason: int | str | None = None
    # Prompt tokens whose KV came from the prefix cache when it was first scheduled.
    num_cached_tokens: int = 0
    # Text decoded so far (kept by the engine's detokenizer) and the part already handed out.
    output_text: str = ""
    spec_stats: SpecStats = field(default_factory=SpecStats)
    # One TokenLogprob per output token, when its params ask for logprobs.
    output_logprobs: list = field(default_factory=list)
    # Where its output is in its structured-output grammar (adaserve.engine.grammar.GrammarState).
    grammar: object | None = None
    # The engine replica that served it, behind a router (adaserve.deploy); None on one engine.
    replica_id: str | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens not yet in the KV cache (prompt chunks, the last sampled token, recompute)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def num_uncached_tokens(self) -> int:
        """Pending tokens less those expected from the prefix cache (before it starts)."""
        return self.num_tokens - max(self.num_computed_tokens, self.num_cached_hint)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
