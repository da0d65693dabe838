"""The SLO step planner: before each step, how many prompt tokens the step may carry, and which
requests can no longer meet their SLO (demoted to best-effort, or refused when they asked to be).
Both come from the cost model and every request's two deadlines. Plain Python; no torch.

TPOT (running requests past their first token). A request that has decoded k tokens e seconds after
its first token, and gains at least one token in a step of t seconds, is on its TPOT line after the
step iff (k + 1) * tpot >= e + t. Its slack for this step is therefore (k + 1) * tpot - e, and the
step may last as long as the smallest slack: prompt tokens fill what that leaves after the decoding
requests' own tokens. A request ahead of its line (speculation gave it more than one token a step)
has banked slack, which is what lets prefill in under load; one exactly on its line allows one TPOT.
Worked example: tpot 50 ms, 10 tokens decoded in 0.4 s -> slack (10 + 1) * 0.05 - 0.4 = 0.15 s.

TTFT (waiting requests, and running ones still prefilling). Prompts are prefilled earliest deadline
first at the rate the planned steps carry prompt tokens. Whenever the order makes a request late, the
longest prefill taken so far is dropped (Moore-Hodgson: the most requests on time on one machine);
the dropped ones cannot make their deadline behind the others and are demoted.

A running request is demoted when even its best speed (every step of a decode-only pass yielding the
most tokens its policy can verify) no longer brings its TPOT within target by max_tokens.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from adaserve.request import Request
from adaserve.sched.cost_model import CostModel


@dataclass
class StepPlan:
    max_prefill_tokens: int | None  # None: no cap beyond the scheduler's token budget
    demote: list[Request] = field(default_factory=list)  # newly best-effort
    refuse: list[Request] = field(default_factory=list)  # no first token yet, slo_policy "reject"


@dataclass(frozen=True)
class StepLoad:
    """What the decoding requests will put into this step (the engine's estimate)."""

    num_decode_tokens: int  # tree tokens (roots + drafted nodes) of the decoding requests
    draft_ms: float = 0.0  # the draft passes before the target's
    max_tokens_per_step: int = 1  # the most tokens one request can gain in a step (1 + tree depth)


class StepPlanner:
    def __init__(self, cost: CostModel, max_num_batched_tokens: int, block_size: int) -> None:
        self.cost = cost
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_size = block_size

    def plan(self, now: float, running: list[Request], waiting: Iterable[Request], load: StepLoad) -> StepPlan:
        context = sum(r.num_computed_tokens for r in running)
        decode_ms = load.draft_ms + self.cost.verify_ms(max(1, load.num_decode_tokens), context, len(running))
        plan = StepPlan(None)
        keeping = []  # running requests that can still meet their TPOT
        for r in running:
            if not _keeps_tpot(r):
                continue
            if _tpot_unattainable(r, now, decode_ms, load.max_tokens_per_step):
                plan.demote.append(r)  # its tokens are flowing: served on, best-effort, never cut off
            else:
                keeping.append(r)
        slack_ms = min((_slack_ms(r, now) for r in keeping), default=math.inf)
        if math.isfinite(slack_ms):
            fits = self.cost.target.max_tokens_within(slack_ms - load.draft_ms, context, self.max_num_batched_tokens)
            plan.max_prefill_tokens = max(self.block_size, fits - load.num_decode_tokens)
        prefill_tokens = plan.max_prefill_tokens or self.max_num_batched_tokens
        step_ms = load.draft_ms + self.cost.verify_ms(load.num_decode_tokens + prefill_tokens, context, len(running))
        prefilling = [r for r in running if r.first_token_time is None] + list(waiting)
        for r in _late_prefills(prefilling, now, prefill_tokens / step_ms):
            _give_up(plan, r)
        return plan


def _keeps_tpot(r: Request) -> bool:
    return r.first_token_time is not None and r.params.slo.tpot_ms is not None and not r.best_effort


def _slack_ms(r: Request, now: float) -> float:
    """How long this step may take with r still on its TPOT line after it (gaining one token)."""
    num_decoded = r.num_output_tokens - 1
    return (num_decoded + 1) * r.params.slo.tpot_ms - 1000.0 * (now - r.first_token_time)


def _tpot_unattainable(r: Request, now: float, decode_ms: float, max_tokens_per_step: int) -> bool:
    """Even at its best speed from now on, r's TPOT at max_tokens would exceed its target."""
    num_decoded, total = r.num_output_tokens - 1, r.params.max_tokens - 1
    if total <= 0:
        return False
    best_ms = 1000.0 * (now - r.first_token_time) + (total - num_decoded) * decode_ms / max_tokens_per_step
    return best_ms > total * r.params.slo.tpot_ms


def _late_prefills(requests: list[Request], now: float, tokens_per_ms: float) -> list[Request]:
    """Of the requests with a TTFT deadline still to meet, those an earliest-deadline-first prefill
    at `tokens_per_ms` makes late, chosen so that as many as possible meet theirs (Moore-Hodgson)."""
    jobs = sorted(
        (r.arrival_time * 1000.0 + r.params.slo.ttft_ms, i, r)
        for i, r in enumerate(requests)
        if r.params.slo.ttft_ms is not None and not r.best_effort and r.first_token_time is None
    )
    taken: list[tuple[float, int, Request]] = []  # max-heap by prefill time: (-ms, i, request)
    finish_ms, late = now * 1000.0, []
    for deadline_ms, i, r in jobs:
        ms = (r.num_tokens - r.num_computed_tokens) / tokens_per_ms
        heapq.heappush(taken, (-ms, i, r))
        finish_ms += ms
        if finish_ms > deadline_ms:
            neg_ms, _, longest = heapq.heappop(taken)
            finish_ms += neg_ms
            late.append(longest)
    return late


def _give_up(plan: StepPlan, r: Request) -> None:
    """Before its first token: refused if it asked to be, else demoted."""
    (plan.refuse if r.params.slo_policy == "reject" else plan.demote).append(r)
