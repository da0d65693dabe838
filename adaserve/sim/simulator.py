"""A simulated server: the engine's own EngineCore (scheduler, KV manager, policies, speculation,
stop checks) run by a SimRunner on a SimClock, with a workload's requests arriving on that clock.
Only the arrivals are driven here; every step is EngineCore.step."""

from __future__ import annotations

import random

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
        self.requests = []
        for i, item in sorted(enumerate(workload), key=lambda p: p[1].arrival_s):
            self.advance_to(item.arrival_s)
            self.submit(f"sim-{i}", item)
        self.drain()
        return self.records()

    def advance_to(self, t: float) -> None:
        """Run steps until the clock reaches t. A step under way at t ends first (requests join at
        step boundaries, as on the server); an idle engine, or one whose waiting requests fit only
        once something new arrives, waits for t."""
        engine, clock = self.engine, self.clock
        while clock.now < t and engine.has_unfinished:
            num_steps = engine.num_steps
            engine.step()
            if engine.num_steps == num_steps:
                break
        clock.now = max(clock.now, t)

    def drain(self) -> None:
        """Run until every submitted request has finished."""
        engine = self.engine
        while engine.has_unfinished:
            num_steps = engine.num_steps
            engine.step()
            if engine.num_steps == num_steps and engine.has_unfinished:
                # (a step that ran nothing may still have refused the last requests)
                num_steps = engine.num_steps
                engine.step()
                if engine.num_steps == num_steps and engine.has_unfinished:
                    raise RuntimeError("simulation stalled: waiting requests never fit")

    def submit(self, request_id: str, item: SimRequest) -> Request:
        """item arrives now (the clock is at or just past item.arrival_s)."""
        request = self._add(request_id, item)
        self.requests.append((item, request))
        return request

    def records(self) -> list[BenchRecord]:
        return [_record(item, request) for item, request in self.requests]

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
