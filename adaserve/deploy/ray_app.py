"""adaserve on Ray Serve: engine replicas behind one OpenAI endpoint (`pip install -e '.[ray]'`).

    ingress (the `adaserve serve` FastAPI app over a RoutedEngine)
        -> deployment handle + SLORequestRouter (adaserve.deploy.router.route on each replica's
           routing stats)
        -> EngineReplica x N (one AsyncEngine each; routing and autoscaling stats from its engine)

Autoscaling follows SLO pressure (slo_autoscaling_policy), not ongoing request counts.
`adaserve serve --replicas N` runs it; build_app gives the application for `serve.run`."""

from __future__ import annotations

import argparse
import logging
import math
import random
from collections.abc import AsyncIterator
from dataclasses import replace

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy, RequestRouterConfig
from ray.serve.handle import DeploymentHandle
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from adaserve.deploy.front import FrontCore, FrontInfo, PolicyInfo, RoutedEngine
from adaserve.deploy.router import MODES, RouteRequest, Tiers, route
from adaserve.deploy.state import ReplicaState, from_engine
from adaserve.outputs import RequestOutput
from adaserve.request import FinishReason
from adaserve.sampling import SamplingParams

log = logging.getLogger(__name__)

RAY_VERSION = "2.60.0"  # what this was built and tested on (the [ray] extra pins it)
ROUTING_STATS_PERIOD_S = 0.5  # Ray's default, 10 s, is many engine steps out of date
TARGET_SLO_PRESSURE = 0.8  # autoscaling keeps each replica's tightest request this far inside its TPOT
REFUSED_MESSAGE = "no replica can meet the request's SLO (slo_policy 'reject')"


class EngineReplica:
    """One engine, as `adaserve serve` builds it from its flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        from adaserve.cli import build_engine

        self.async_engine, self.server_config = build_engine(args)
        self.core = self.async_engine.engine
        self.cost = self.core.cost_model or self.core.load_cost_model()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._state: ReplicaState | None = None

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str, route: RouteRequest, refuse: bool = False
    ) -> AsyncIterator[RequestOutput]:
        """route: what the router read (unused here). refuse: the router found no replica that can
        meet the request's SLO and the request asked to be refused."""
        if refuse:
            yield RequestOutput(request_id, [], "", True, FinishReason.REFUSED, REFUSED_MESSAGE)
            return
        async for delta in self.async_engine.generate(prompt_ids, params, request_id):
            if delta.request is not None:
                delta.request.grammar = None  # (a compiled matcher: not picklable, and done with)
                delta.request.replica_id = self.replica_id
            yield delta

    def front_info(self) -> FrontInfo:
        core = self.core
        policy = PolicyInfo(core.policy.name, core.policy.planner)
        eos = tuple(sorted(core.runner.eos_token_ids))
        return FrontInfo(core.tokenizer, core.max_model_len, core.runner.vocab_size, eos, policy, self.server_config)

    def _read_state(self) -> ReplicaState:
        # (read off the engine thread's lists: a torn read is retried once, else the last state stands)
        for _ in range(2):
            try:
                self._state = from_engine(self.core, self.cost, self.replica_id)
                break
            except (RuntimeError, ValueError, IndexError):
                continue
        if self._state is None:
            raise RuntimeError("no engine state read yet")
        return self._state

    def record_routing_stats(self) -> dict:
        return self._read_state().to_dict()

    def record_autoscaling_stats(self) -> dict:
        s = self._read_state()
        return {"slo_pressure": s.slo_pressure, "slo_demand": s.slo_demand, "num_ongoing": s.num_ongoing}

    def check_health(self) -> None:
        if not self.async_engine.is_alive:
            raise RuntimeError(f"engine loop is not running: {self.async_engine.error!r}")

    def __del__(self) -> None:
        engine = getattr(self, "async_engine", None)
        if engine is not None:
            engine.shutdown()


class SLORequestRouter(FIFOMixin, RequestRouter):
    """Ranks replicas with adaserve.deploy.router.route on their routing stats. A replica routed to
    since its last stats counts those requests as waiting there, so a burst between two reports
    does not herd onto one replica."""

    def initialize_state(
        self,
        mode: str = "spread",
        seed: int | None = None,
        tier_tpot_ms: str | None = None,
        tier_shares: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"routing mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.rng, self.turn = mode, random.Random(seed), 0
        self.tiers = Tiers.parse(tier_tpot_ms, tier_shares) if tier_tpot_ms is not None else None
        self.since_stats: dict[str, tuple[int, int, int]] = {}  # replica -> (id of its stats, requests, tokens)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        request = pending_request.kwargs.get("route") if pending_request is not None else None
        if request is None:  # (a control call such as front_info, or a probe: anywhere)
            return [self.rng.sample(candidate_replicas, len(candidate_replicas))]
        states = self._known_states(candidate_replicas)
        ranks, refuse, backoff = rank_replicas(
            candidate_replicas, request, self.mode, self.rng, self.turn, states, self.tiers
        )
        self.turn += 1
        pending_request.routing_context.should_backoff = True  # (retries wait: never a busy loop)
        if refuse:
            pending_request.kwargs["refuse"] = True  # the replica answers at once with the refusal
        if backoff and not refuse:
            return []  # every replica is full: Ray routes it again after a backoff
        return ranks

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        request = pending_request.kwargs.get("route")
        if request is None:
            return
        key = replica_id.unique_id
        stats_id, n, tokens = self.since_stats.get(key, (0, 0, 0))
        self.since_stats[key] = (stats_id, n + 1, tokens + request.num_prompt_tokens)

    def _known_states(self, replicas: list[RunningReplica]) -> dict[str, ReplicaState]:
        states = {}
        for r in replicas:
            stats, key = r.routing_stats, r.replica_id.unique_id
            if not stats:
                continue
            stats_id, n, tokens = self.since_stats.get(key, (0, 0, 0))
            if stats_id != id(stats):  # fresh stats: they count what was routed before them
                n, tokens = 0, 0
                self.since_stats[key] = (id(stats), 0, 0)
            s = ReplicaState.from_dict({**stats, "replica_id": key})
            states[key] = _with_routed(s, n, tokens)
        return states


def _with_routed(s: ReplicaState, num_requests: int, num_tokens: int) -> ReplicaState:
    tokens = s.num_waiting_prefill_tokens + num_tokens
    return replace(s, num_waiting=s.num_waiting + num_requests, num_waiting_prefill_tokens=tokens)


def rank_replicas(
    replicas: list,
    request: RouteRequest,
    mode: str,
    rng: random.Random,
    turn: int,
    states: dict[str, ReplicaState],
    tiers: Tiers | None = None,
) -> tuple[list[list], bool, bool]:
    """(ranks of replicas, refuse, backoff). Replicas that have not reported yet (just started) rank
    right after the first choice if it is feasible, else first: they are most likely idle."""
    by_id = {r.replica_id.unique_id: r for r in replicas}
    unknown = [r for key, r in by_id.items() if key not in states]
    decision = route(request, [states[k] for k in by_id if k in states], mode, rng, turn, tiers)
    if decision.refuse and not unknown:  # (sent anywhere: the replica answers with the refusal at once)
        return [list(by_id.values())], True, False
    ranked = [[by_id[k] for k in rank] for rank in decision.ranks]
    if unknown:
        ranked = ranked[:1] + [unknown] + ranked[1:] if decision.feasible else [unknown] + ranked
    return ranked, False, decision.backoff and not unknown


def desired_replicas(
    pressures: list[float], current: int, lo: int, hi: int, target: float = TARGET_SLO_PRESSURE
) -> int:
    """Enough replicas that the mean SLO pressure would be `target`: the sum of the replicas'
    pressures over the target. Worked example: 2 replicas at 1.2 and 0.8 -> ceil(2.0 / 0.8) = 3."""
    if not pressures:
        return max(lo, min(hi, current))
    return max(lo, min(hi, math.ceil(sum(pressures) / target)))


def slo_autoscaling_policy(ctx: AutoscalingContext) -> tuple[int, dict]:
    """Ray Serve custom autoscaling policy: replicas from SLO pressure (record_autoscaling_stats)."""
    pressures = list((ctx.aggregated_metrics or {}).get("slo_pressure", {}).values())
    n = desired_replicas(
        pressures, ctx.current_num_replicas, ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
    )
    return n, ctx.policy_state or {}


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, engine: DeploymentHandle) -> None:
        self.engine = engine

    async def __serve_build_asgi_app__(self):
        from adaserve.server.app import create_app

        info: FrontInfo = await self.engine.front_info.remote()
        streaming = self.engine.options(stream=True)

        async def stream(prompt_ids, params, request_id, route_request):
            outputs = streaming.generate.remote(prompt_ids, params, request_id, route=route_request)
            finished = False
            try:
                async for delta in outputs:
                    finished = delta.finished
                    yield delta
            finally:
                if not finished:  # the client went away, or the replica failed: stop it there
                    outputs.cancel()

        return create_app(RoutedEngine(FrontCore(info), stream), info.server_config, engine_gauges=False)


def build_app(args: argparse.Namespace):
    """The Ray Serve application for `adaserve serve` flags plus --replicas, --router, --autoscale."""
    router = RequestRouterConfig(
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S, request_routing_stats_timeout_s=5
    )
    if args.router != "power_of_two":  # (Ray's own router is the power-of-two baseline)
        router = RequestRouterConfig(
            request_router_class=SLORequestRouter,
            request_router_kwargs={
                "mode": args.router,
                "tier_tpot_ms": args.tier_tpot_ms,
                "tier_shares": args.tier_shares,
            },
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
            request_routing_stats_timeout_s=5,
        )
    options = dict(
        name="engine",
        max_ongoing_requests=args.max_pending_requests,  # (Ray's default of 5 would cap the batch)
        ray_actor_options={"num_cpus": args.threads},
        request_router_config=router,
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    if args.autoscale:
        lo, hi = (int(x) for x in args.autoscale.split(":"))
        policy = AutoscalingPolicy(policy_function=slo_autoscaling_policy)
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=lo, max_replicas=hi, initial_replicas=args.replicas, policy=policy
        )
    else:
        options["num_replicas"] = args.replicas
    engine = serve.deployment(EngineReplica).options(**options)
    return Ingress.options(ray_actor_options={"num_cpus": 0}).bind(engine.bind(args))


def run(args: argparse.Namespace) -> None:
    """`adaserve serve --replicas N`: a local Ray instance (or RAY_ADDRESS's cluster), blocking."""
    import ray

    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(args), name="adaserve", route_prefix="/", blocking=True)
