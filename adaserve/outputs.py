"""Typed hand-offs from the engine to its callers. Plain data; no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from adaserve.request import FinishReason, Request


@dataclass
class RequestOutput:
    """What one engine step did for one request (streaming delta plus running totals)."""

    request_id: str
    new_token_ids: list[int]
    text: str  # full output text so far (stop strings removed)
    finished: bool
    finish_reason: FinishReason | None = None
    error: str | None = None
    # Set by the async engine on the final output: the finished request (timings, stats).
    request: Request | None = None
    # The target's log-probabilities of new_token_ids (adaserve.engine.logits_process.TokenLogprob),
    # when the request asked for them.
    new_logprobs: list | None = None


@dataclass
class CompletionOutput:
    """A finished request, as the offline API returns it."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    token_times: list[float] = field(default_factory=list)  # one per output token
    num_preemptions: int = 0
    logprobs: list | None = None  # one TokenLogprob per output token, when asked for
