"""N simulated replicas behind one router: each replica is a Simulator (the engine's own EngineCore
on its own SimClock), and each arrival is routed by adaserve.deploy.router.route, the function the
Ray Serve router calls, on the states the replicas report (adaserve.deploy.state.from_engine).

Before routing a request that arrives at t, every replica is run up to t (a step under way then ends
first, as on a server), so the router sees each replica as it is when the request arrives."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

from adaserve.bench.client import BenchRecord
from adaserve.deploy.router import RouteRequest, Tiers, route
from adaserve.deploy.state import from_engine
from adaserve.sched.cost_model import CostModel
from adaserve.sim.acceptance import AcceptanceModel
from adaserve.sim.config import SimConfig
from adaserve.sim.simulator import Simulator
from adaserve.sim.workloads import SimRequest

REFUSED = "refused by the router: no replica can meet its SLO"


@dataclass
class RoutingStats:
    num_routed: Counter = field(default_factory=Counter)  # requests per replica
    num_infeasible: int = 0  # routed although no replica was predicted to meet the SLO
    num_backoff: int = 0  # arrived while every replica was full
    num_refused: int = 0


class ClusterSimulator:
    def __init__(
        self,
        config: SimConfig,
        cost: CostModel,
        acceptance: AcceptanceModel | None,
        num_replicas: int,
        mode: str,
        slo_policy: str = "best_effort",
        tiers: Tiers | None = None,
    ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        self.cost, self.mode, self.slo_policy, self.tiers = cost, mode, slo_policy, tiers
        self.replicas = [
            Simulator(replace(config, seed=config.seed + i), cost, acceptance) for i in range(num_replicas)
        ]
        self.rng = random.Random(config.seed)
        self.stats = RoutingStats()

    @property
    def num_steps(self) -> int:
        return sum(sim.num_steps for sim in self.replicas)

    def run(self, workload: list[SimRequest]) -> list[BenchRecord]:
        """Every request's timeline, in workload order (refused ones carry an error)."""
        records: dict[int, BenchRecord] = {}
        placed: list[tuple[int, int]] = []  # (workload index, replica)
        for turn, (i, item) in enumerate(sorted(enumerate(workload), key=lambda p: p[1].arrival_s)):
            for sim in self.replicas:
                sim.advance_to(item.arrival_s)
            k = self._route(item, turn)
            if k is None:
                records[i] = BenchRecord(item.category, item.slo, item.arrival_s, error=REFUSED)
                continue
            self.replicas[k].submit(f"sim-{i}", item)
            placed.append((i, k))
        for sim in self.replicas:
            sim.drain()
        per_replica = [iter(sim.records()) for sim in self.replicas]
        for i, k in placed:  # each replica's records are in the order it was given them
            records[i] = next(per_replica[k])
        return [records[i] for i in range(len(workload))]

    def _route(self, item: SimRequest, turn: int) -> int | None:
        states = [from_engine(sim.engine, self.cost, str(k)) for k, sim in enumerate(self.replicas)]
        request = RouteRequest(item.num_prompt_tokens, item.max_tokens, item.slo, self.slo_policy)
        decision = route(request, states, self.mode, self.rng, turn, self.tiers)
        self.stats.num_backoff += decision.backoff
        if decision.refuse:
            self.stats.num_refused += 1
            return None
        self.stats.num_infeasible += not decision.feasible
        k = int(decision.choice)
        self.stats.num_routed[k] += 1
        return k
