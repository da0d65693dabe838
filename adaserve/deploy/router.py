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

`tiered` reserves replicas for tight requests: the first `Tiers.share` of them (by id) serve the
requests whose TPOT target is at most `Tiers.tight_tpot_ms`, the others the rest, each tier routed
as by spread. Why: a step's time grows with its batch, so a tight request sharing a replica with
many loose ones misses, and holding the loose ones back for it costs their TTFT; apart, the tight
tier runs short batches and the loose tier long ones. In the simulated study this is the only mode
well ahead of power-of-two (docs/results.md#routing-across-replicas); the share is the operator's
to size (too small a tier starves the tight class, too large the loose ones).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from adaserve.deploy.state import ReplicaState
from adaserve.slo import SLO

MODES = ("spread", "pack", "tiered", "power_of_two", "round_robin")
SLO_AWARE_MODES = ("spread", "pack", "tiered")


@dataclass(frozen=True)
class Tiers:
    tight_tpot_ms: float  # requests with a TPOT target at most this go to the tight tier
    share: float = 0.5  # of the replicas (at least one each when there are two or more)

    def __post_init__(self) -> None:
        if not 0 < self.share < 1 or self.tight_tpot_ms <= 0:
            raise ValueError(f"tiers need 0 < share < 1 and tight_tpot_ms > 0, got {self}")

    def split(self, replicas: list[ReplicaState]) -> tuple[list[ReplicaState], list[ReplicaState]]:
        """(tight tier, loose tier). Worked example: 8 replicas, share 0.5 -> ids 0-3 and 4-7;
        3 replicas, share 0.5 -> round(1.5) = 2 and 1; 1 replica -> it serves both tiers."""
        if len(replicas) < 2:
            return replicas, replicas
        ordered = sorted(replicas, key=lambda s: s.replica_id)
        num_tight = min(len(ordered) - 1, max(1, round(self.share * len(ordered))))
        return ordered[:num_tight], ordered[num_tight:]


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
        raise ValueError("routing mode 'tiered' needs Tiers (tight_tpot_ms, share)")
    tight, loose = tiers.split(replicas)
    target = request.slo.tpot_ms
    own = tight if target is not None and target <= tiers.tight_tpot_ms else loose
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
