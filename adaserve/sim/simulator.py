"""The simulation loop. Everything that decides anything is the engine's own code: Scheduler and
KVCacheManager (admission, chunked prefill, preemption), the registry's policy and prefill cap,
SpecDecoder.attach_trees (proposal, the policy's selection within the step's spare budget, KV
reservation) and commit, and the greedy acceptance walk. Only the forward passes are replaced:
each step advances a simulated clock by the cost model's latency for the draft passes the
proposer ran plus one target pass over the step's sequences, each pass described as the engine's
step log describes it (adaserve.engine.step_log.pass_record) and predicted as a logged pass is
(adaserve.sim.step_timing.pass_terms, then the config's PassCorrection):

    step ms = (sum(draft pass ms) + target pass ms) x time_scale + host(logits rows)
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from adaserve.bench.client import BenchRecord
from adaserve.engine.speculation import SpecDecoder
from adaserve.engine.step_log import pass_record
from adaserve.kv.manager import KVCacheManager
from adaserve.request import FinishReason, Request
from adaserve.sampling import SamplingParams
from adaserve.sched.cost_model import CostModel
from adaserve.sched.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from adaserve.sim.acceptance import AcceptanceModel
from adaserve.sim.config import SimConfig
from adaserve.sim.proposer import SimProposer
from adaserve.sim.step_timing import HostModel, pass_terms
from adaserve.sim.workloads import SimRequest
from adaserve.spec.registry import choose_policy, prefill_token_cap
from adaserve.spec.verify import accept_greedy

SYNTHETIC_TOKEN = 0


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _NullKVCache:
    """Stands in for the KV tensors: the simulator moves no data."""

    def copy_slots(self, src_slots: list[int], dst_slots: list[int]) -> None:
        pass


@dataclass
class _SimTarget:
    kv: KVCacheManager
    kv_cache: _NullKVCache


class Simulator:
    def __init__(self, config: SimConfig, cost: CostModel, acceptance: AcceptanceModel | None) -> None:
        self.config, self.cost = config, cost
        self.clock = SimClock()
        self.host = HostModel(config.step_overhead_ms, config.host_ms_per_target_row, config.host_ms_per_draft_row)
        self.kv = KVCacheManager(max(1, config.kv_capacity_tokens // config.block_size), config.block_size)
        self.choice = choose_policy(config.policy, cost)
        self.proposer: SimProposer | None = None
        self.spec: SpecDecoder | None = None
        if self.choice.spec is not None:
            if acceptance is None or cost.draft is None:
                raise ValueError(
                    f"policy {config.policy!r} speculates: it needs an acceptance model and a draft cost curve"
                )
            self.proposer = SimProposer(acceptance, random.Random(config.seed))
            target = _SimTarget(self.kv, _NullKVCache())
            self.spec = SpecDecoder(self.proposer, self.choice.spec, target, None, self.clock, record_traces=False)
        num_spec = self.choice.spec.max_tokens_per_seq if self.choice.spec else 0
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens, num_spec)
        self.num_steps = 0
        self.requests: list[tuple[SimRequest, Request]] = []  # (workload item, engine request) of the last run

    def run(self, workload: list[SimRequest]) -> list[BenchRecord]:
        """Every request's timeline, as the benchmark client would have recorded it."""
        pending = deque(sorted(enumerate(workload), key=lambda p: p[1].arrival_s))
        requests = self.requests = []
        while pending or self.scheduler.has_work:
            while pending and pending[0][1].arrival_s <= self.clock.now:
                i, item = pending.popleft()
                requests.append((item, self._add(f"sim-{i}", item)))
            if not self.scheduler.has_work:
                self.clock.now = pending[0][1].arrival_s
                continue
            if not self._step():  # nothing fits right now: only a new arrival can change that
                if not pending:
                    raise RuntimeError("simulation stalled: waiting requests never fit")
                self.clock.now = max(self.clock.now, pending[0][1].arrival_s)
        return [_record(item, request) for item, request in requests]

    def _add(self, request_id: str, item: SimRequest) -> Request:
        if item.num_prompt_tokens + item.max_tokens > self.kv.capacity_tokens:
            raise ValueError(
                f"a request of {item.num_prompt_tokens} + {item.max_tokens} tokens never fits the KV cache"
            )
        params = SamplingParams(max_tokens=item.max_tokens, temperature=0.0, ignore_eos=True, slo=item.slo)
        request = Request(request_id, [SYNTHETIC_TOKEN] * item.num_prompt_tokens, params, arrival_time=self.clock.now)
        self.scheduler.add(request)
        if self.proposer:
            self.proposer.add(request_id, item.category, item.prompt_key)
        return request

    def _step(self) -> bool:
        tpots = [r.params.slo.tpot_ms for r in self.scheduler.running]
        cap = prefill_token_cap(
            self.choice, self.cost, tpots, self.config.max_num_batched_tokens, self.config.block_size
        )
        step = self.scheduler.schedule(cap)
        for request in step.preempted:
            if self.spec:
                self.spec.free(request.request_id)
        if step.is_empty:
            return False
        self.num_steps += 1
        self.clock.now += self._step_ms(step) / 1000.0
        for chunk in step.chunks:
            self._finish_chunk(chunk)
        return True

    def _step_ms(self, step: SchedulerOutput) -> float:
        draft_ms, num_draft_rows = 0.0, 0
        if self.spec:
            self.proposer.draft_passes = []
            self.spec.attach_trees(step)
            for p in self.proposer.draft_passes:
                draft_ms += self.config.draft_pass(pass_terms(self.cost, p))
                num_draft_rows += p.num_logit_rows
        # Logits: one row per sampling sequence, and every node of a verified tree.
        num_target_rows = sum(c.tree.num_nodes if c.tree is not None else int(c.samples) for c in step.chunks)
        verify = pass_record("target", [(c.num_new_tokens, c.start) for c in step.chunks], num_target_rows)
        verify_ms = self.config.target_pass(pass_terms(self.cost, verify))
        return (draft_ms + verify_ms) * self.config.time_scale + self.host(num_target_rows, num_draft_rows)

    def _finish_chunk(self, chunk: ScheduledChunk) -> None:
        request = chunk.request
        if chunk.tree is not None:
            choices = self.proposer.target_choices(request.request_id, chunk.tree)
            new_tokens = self.spec.commit(chunk, accept_greedy(chunk.tree, choices))
        else:
            samples = chunk.samples  # (reads num_computed_tokens: before the update)
            request.num_computed_tokens += chunk.num_new_tokens
            if not samples:
                return
            new_tokens = [SYNTHETIC_TOKEN]
        room = request.params.max_tokens - request.num_output_tokens
        for _ in new_tokens[:room]:
            request.output_ids.append(SYNTHETIC_TOKEN)
            request.token_times.append(self.clock.now)
        if request.first_token_time is None:
            request.first_token_time = self.clock.now
        if request.num_output_tokens >= request.params.max_tokens:
            self.scheduler.finish(request, FinishReason.LENGTH)
            request.finish_time = self.clock.now
            if self.spec:
                self.spec.free(request.request_id)
                self.proposer.finish(request.request_id)


def _record(item: SimRequest, request: Request) -> BenchRecord:
    return BenchRecord(
        item.category,
        item.slo,
        item.arrival_s,
        request.first_token_time,
        list(request.token_times),
        request.num_output_tokens,
    )
