"""A simulated server: the engine's own EngineCore (scheduler, KV manager, policies, speculation,
stop checks) run by a SimRunner on a SimClock, with a workload's requests arriving on that clock.
Only the arrivals are driven here; every step is EngineCore.step."""

from __future__ import annotations

import random
from collections import deque

from adaserve.bench.client import BenchRecord
from adaserve.engine.core import EngineCore
from adaserve.request import Request
from adaserve.sampling import SamplingParams
from adaserve.sched.cost_model import CostModel
from adaserve.sim.acceptance import AcceptanceModel
from adaserve.sim.config import SimConfig
from adaserve.sim.proposer import SimProposer
from adaserve.sim.runner import SYNTHETIC_TOKEN, SimClock, SimRunner
from adaserve.sim.workloads import SimRequest
from adaserve.spec.registry import speculates


class Simulator:
    def __init__(self, config: SimConfig, cost: CostModel, acceptance: AcceptanceModel | None) -> None:
        self.config = config
        self.clock = SimClock()
        self.proposer: SimProposer | None = None
        if speculates(config.policy):
            if acceptance is None or cost.draft is None:
                raise ValueError(
                    f"policy {config.policy!r} speculates: it needs an acceptance model and a draft cost curve"
                )
            self.proposer = SimProposer(acceptance, random.Random(config.seed))
        self.runner = SimRunner(config, cost, self.clock, self.proposer)
        self.engine = EngineCore(config.engine_config(), self.runner, self.clock)
        self.requests: list[tuple[SimRequest, Request]] = []  # (workload item, engine request) of the last run

    @property
    def num_steps(self) -> int:
        return self.engine.num_steps

    def run(self, workload: list[SimRequest]) -> list[BenchRecord]:
        """Every request's timeline, as the benchmark client would have recorded it."""
        pending = deque(sorted(enumerate(workload), key=lambda p: p[1].arrival_s))
        requests = self.requests = []
        engine, clock = self.engine, self.clock
        while pending or engine.has_unfinished:
            while pending and pending[0][1].arrival_s <= clock.now:
                i, item = pending.popleft()
                requests.append((item, self._add(f"sim-{i}", item)))
            if not engine.has_unfinished:
                clock.now = pending[0][1].arrival_s
                continue
            num_steps = engine.num_steps
            engine.step()
            if engine.num_steps == num_steps:  # nothing fits right now: only a new arrival can change that
                if not pending:
                    raise RuntimeError("simulation stalled: waiting requests never fit")
                clock.now = max(clock.now, pending[0][1].arrival_s)
        return [_record(item, request) for item, request in requests]

    def _add(self, request_id: str, item: SimRequest) -> Request:
        if item.num_prompt_tokens + item.max_tokens > self.runner.kv.capacity_tokens:
            raise ValueError(
                f"a request of {item.num_prompt_tokens} + {item.max_tokens} tokens never fits the KV cache"
            )
        params = SamplingParams(max_tokens=item.max_tokens, temperature=0.0, ignore_eos=True, slo=item.slo)
        request = self.engine.add_request([SYNTHETIC_TOKEN] * item.num_prompt_tokens, params, request_id)
        if self.proposer:
            self.proposer.add(request_id, item.category, item.prompt_key)
        return request


def _record(item: SimRequest, request: Request) -> BenchRecord:
    return BenchRecord(
        item.category,
        item.slo,
        item.arrival_s,
        request.first_token_time,
        list(request.token_times),
        request.num_output_tokens,
    )
