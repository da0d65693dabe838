"""Where a new request goes: one pure function of the request, every replica's reported state, a mode
and a random generator. The Ray Serve request router and the multi-replica simulator both call it.

For each replica it predicts the new request's TTFT (the prompt tokens queued ahead of it, prefilled
at the replica's prefill rate, after a slot frees if all are taken) and TPOT (the replica's step
once the request joins, over the tokens a request gains per step), and the TPOT of the tightest
request already running there (the same step: one more request slows all). Its slack is the
smallest relative margin of the three: 1 - predicted / target. Worked example: TTFT target 2 s
predicted 1.5 s (0.25), TPOT target 100 ms predicted 60 ms (0.4), tightest running 50 ms predicted
60 ms (-0.2) -> slack -0.2: infeasible, the request would push a running one off its SLO.

Modes: `spread` puts the request on the feasible replica with the fewest requests (the most slack
breaking ties), `pack` where the slack is smallest but not negative (leaving roomy replicas for
tight requests to come); `power_of_two` is Ray Serve's default
(two replicas at random, the one with fewer requests) and `round_robin` the plainest. Feasible
replicas rank first, infeasible ones last, ties at random. When no replica is feasible a request
that asked to be refused (`slo_policy: "reject"`) is; any other goes best-effort to the replica
where it misses least. When every replica is full the router should back off and try again.

`tiered` splits the replicas (by id) into SLO tiers (`Tiers`: TPOT bounds and a share of the
replicas for each), sends each request to its tier and routes within it as by spread. Why: a step's
time grows with its batch, so a tight request sharing a replica with many loose ones misses, and
holding the loose ones back for it costs their TTFT; apart, the tight tier runs short batches and
the loose tiers long ones, and short-prompt requests do not wait behind long prompts' prefill. In
the simulated study this is the only mode well ahead of power-of-two
(docs/results.md#routing-across-replicas); the shares are the operator's to size (too small a tier
starves its class).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from adaserve.deploy.state import ReplicaState
from adaserve.slo import SLO

MODES = ("spread", "pack", "tiered", "power_of_two", "round_robin")
SLO_AWARE_MODES = ("spread", "pack", "tiered")


@dataclass(frozen=True)
class Tiers:
    """`tiered` mode's split. Tier k takes the requests whose TPOT target is at most
    tpot_bounds_ms[k] (the first bound that holds); the last tier the rest, and those with no target."""

    tpot_bounds_ms: tuple[float, ...]  # ascending
    shares: tuple[float, ...]  # of the replicas, one per tier (one more than the bounds), summing to 1

    def __post_init__(self) -> None:
        bounds, shares = self.tpot_bounds_ms, self.shares
        ok = len(shares) == len(bounds) + 1 and all(x > 0 for x in bounds + shares)
        if not ok or list(bounds) != sorted(bounds) or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"tiers need ascending TPOT bounds > 0 and one share > 0 more, summing to 1; got {self}")

    @classmethod
    def parse(cls, bounds_ms: str, shares: str | None = None) -> Tiers:
        """'150,400' and '0.5,0.25,0.25'; shares default to equal ones."""
        bounds = tuple(float(x) for x in bounds_ms.split(","))
        parts = tuple(float(x) for x in shares.split(",")) if shares else (1 / (len(bounds) + 1),) * (len(bounds) + 1)
        return cls(bounds, parts)

    def tier_of(self, tpot_ms: float | None) -> int:
        if tpot_ms is None:
            return len(self.tpot_bounds_ms)
        return next((k for k, bound in enumerate(self.tpot_bounds_ms) if tpot_ms <= bound), len(self.tpot_bounds_ms))

    def split(self, replicas: list[ReplicaState]) -> list[list[ReplicaState]]:
        """The replicas of each tier, by replica id. Worked example: 8 replicas, shares 0.5, 0.25,
        0.25 -> ids 0-3, 4-5, 6-7; 3 replicas, shares 0.5, 0.5 -> round(1.5) = 2 and 1. Fewer
        replicas than tiers: one each, the loosest tiers sharing the last (2 replicas, 3 tiers ->
        [0], [1], [1])."""
        ordered = sorted(replicas, key=lambda s: s.replica_id)
        n = len(ordered)
        if n < len(self.shares):
            return [ordered[min(k, n - 1) : min(k, n - 1) + 1] for k in range(len(self.shares))]
        counts = [max(1, round(share * n)) for share in self.shares]
        while sum(counts) > n:  # (rounding up): take from the one furthest above its share, ties the later
            over = [(counts[k] - self.shares[k] * n, k) if counts[k] > 1 else (-n, k) for k in range(len(counts))]
            counts[max(over)[1]] -= 1
        while sum(counts) < n:  # (rounding down): give to the one furthest below its share
            counts[max(range(len(counts)), key=lambda k: self.shares[k] * n - counts[k])] += 1
        starts = list(itertools.accumulate(counts, initial=0))
        return [ordered[starts[k] : starts[k + 1]] for k in range(len(counts))]


@dataclass(frozen=True)
class RouteRequest:
    num_prompt_tokens: int
    max_tokens: int
    slo: SLO = SLO()
    slo_policy: str = "best_effort"


@dataclass(frozen=True)
class Prediction:
    replica_id: str
    ttft_ms: float
    tpot_ms: float  # the new request's, and (same step) that of every request running there
    slack: float  # min over the targets of 1 - predicted / target; 1.0 with no target at all
    fits: bool  # a slot will free and its KV fits now
    full: bool  # no room to queue it: every slot taken and requests already waiting, or no KV

    @property
    def feasible(self) -> bool:
        return self.fits and self.slack >= 0


@dataclass(frozen=True)
class RouteDecision:
    ranks: list[list[str]]  # replica ids, most preferred rank first (Ray's choose_replicas shape)
    feasible: bool  # the first choice is predicted to meet the request's SLO
    refuse: bool = False  # nothing is feasible and the request asked to be refused
    backoff: bool = False  # every replica is full: wait and route again

    @property
    def choice(self) -> str | None:
        return self.ranks[0][0] if self.ranks and self.ranks[0] else None


def predict(request: RouteRequest, state: ReplicaState) -> Prediction:
    # At either pace open to the replica (its policy may switch): speculating, or plain decoding.
    # The requests waiting there join the batch before or with this one: count them, or every
    # request arriving within one step herds onto the replica that looked best at its start.
    num_joining, joining_context = state.num_waiting + 1, state.num_waiting_prefill_tokens + request.num_prompt_tokens
    added_ms = num_joining * state.ms_per_request + state.ms_per_context_token * joining_context
    tpot_ms = min((state.step_ms + added_ms) / max(1.0, state.tokens_per_step), state.plain_step_ms + added_ms)
    queued = state.num_waiting_prefill_tokens + request.num_prompt_tokens
    ttft_ms = state.ms_to_free_slot + max(state.prefill_step_ms, queued * state.prefill_ms_per_token)
    margins = [1 - tpot_ms / t for t in (request.slo.tpot_ms, state.tightest_tpot_ms) if t is not None]
    if request.slo.ttft_ms is not None:
        margins.append(1 - ttft_ms / request.slo.ttft_ms)
    blocks = math.ceil((request.num_prompt_tokens + request.max_tokens) / state.block_size)
    fits_kv = blocks <= state.num_free_kv_blocks
    no_slot = state.num_running + state.num_waiting >= state.max_num_seqs
    return Prediction(
        state.replica_id,
        ttft_ms,
        tpot_ms,
        min(margins, default=1.0),
        fits=fits_kv,
        full=not fits_kv or (no_slot and state.num_waiting > 0),
    )


def route(
    request: RouteRequest,
    replicas: list[ReplicaState],
    mode: str,
    rng: random.Random,
    turn: int = 0,
    tiers: Tiers | None = None,
) -> RouteDecision:
    """turn: how many requests this router has routed before (round-robin's position). tiers: the
    split `tiered` mode needs."""
    if mode not in MODES:
        raise ValueError(f"routing mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not replicas:
        return RouteDecision([], feasible=False, backoff=True)
    if mode == "tiered":
        return _tiered(request, replicas, rng, tiers)
    predictions = [predict(request, s) for s in replicas]
    backoff = all(p.full for p in predictions)
    any_feasible = any(p.feasible for p in predictions)
    if mode in SLO_AWARE_MODES and not any_feasible and request.slo_policy == "reject":
        return RouteDecision([], feasible=False, refuse=True, backoff=backoff)
    if mode == "power_of_two":
        order = _power_of_two(replicas, rng)
    elif mode == "round_robin":
        order = [replicas[(turn + i) % len(replicas)].replica_id for i in range(len(replicas))]
    else:
        order = _by_slack(predictions, replicas, mode, rng)
    first = next(p for p in predictions if p.replica_id == order[0])
    return RouteDecision([[r] for r in order], feasible=first.feasible, backoff=backoff)


def _tiered(
    request: RouteRequest, replicas: list[ReplicaState], rng: random.Random, tiers: Tiers | None
) -> RouteDecision:
    if tiers is None:
        raise ValueError("routing mode 'tiered' needs Tiers (TPOT bounds and shares)")
    own = tiers.split(replicas)[tiers.tier_of(request.slo.tpot_ms)]
    decision = route(request, own, "spread", rng)
    if decision.refuse:
        return decision
    # The other tier's replicas rank last, should every replica of its own one fail.
    ranked = {r for rank in decision.ranks for r in rank}
    rest = sorted((s for s in replicas if s.replica_id not in ranked), key=lambda s: (s.num_ongoing, rng.random()))
    ranks = decision.ranks + [[s.replica_id] for s in rest]
    return RouteDecision(ranks, decision.feasible, backoff=decision.backoff)


def _by_slack(predictions: list[Prediction], replicas: list[ReplicaState], mode: str, rng: random.Random) -> list[str]:
    ongoing = {s.replica_id: s.num_ongoing for s in replicas}

    def key(p: Prediction) -> tuple:
        # Feasible first: spread takes the one with the fewest requests (most slack breaks ties: the
        # slack predictions are rough under load, and ranking by them alone herds and unbalances),
        # pack the least slack. Infeasible ones last, by fewest requests, then the least miss.
        if p.feasible:
            if mode == "spread":
                return (0, ongoing[p.replica_id], -p.slack, rng.random())
            return (0, p.slack, ongoing[p.replica_id], rng.random())
        return (1, not p.fits, ongoing[p.replica_id], -p.slack, rng.random())

    return [p.replica_id for p in sorted(predictions, key=key)]


def _power_of_two(replicas: list[ReplicaState], rng: random.Random) -> list[str]:
    picked = rng.sample(replicas, min(2, len(replicas)))
    picked.sort(key=lambda s: (s.num_ongoing, rng.random()))
    rest = [s for s in replicas if s not in picked]
    rng.shuffle(rest)
    return [s.replica_id for s in picked + rest]
