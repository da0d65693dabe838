"""Continuous batching with chunked prefill under a per-step token budget. Plain Python; no torch.

Every request has `num_tokens` known tokens (prompt + output) of which `num_computed_tokens` are
in the KV cache; a step feeds each scheduled request its next `num_new_tokens` pending tokens.
Prefill, its chunks, decode (1 pending token: the last sampled one) and recompute after
preemption are all the same thing, as in vLLM v1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from adaserve.kv.manager import KVCacheManager
from adaserve.request import FinishReason, Request, RequestStatus
from adaserve.spec.tree import TreeLayout


@dataclass
class ScheduledChunk:
    request: Request
    num_new_tokens: int
    slot_ids: list[int]  # KV slots of positions [start, start + num_new_tokens)
    # Set by speculation on a decode chunk: the root (its pending token) plus drafted nodes.
    tree: TreeLayout | None = None

    @property
    def start(self) -> int:
        return self.request.num_computed_tokens

    @property
    def samples(self) -> bool:
        """The chunk reaches the last known token, so the step samples the next one."""
        return self.tree is not None or self.start + self.num_new_tokens == self.request.num_tokens

    @property
    def is_decode(self) -> bool:
        """Feeds just the last sampled token: the root of a speculation tree."""
        return self.num_new_tokens == 1 and self.request.num_pending_tokens == 1


@dataclass(frozen=True)
class StepLimits:
    """One step's limits beyond the scheduler's own (the SLO planner's, or a prefill cap)."""

    max_prefill_tokens: int | None = None  # prompt (and recompute) tokens; decode roots are not capped
    num_spec_tokens_per_seq: int | None = None  # budget held back per decoding request for its draft tree
    max_step_tokens: int | None = None  # all the step's tokens (below max_num_batched_tokens)
    max_new_requests: int | None = None  # waiting requests that may start
    pause_best_effort: bool = False  # running best-effort requests wait (they keep their KV, not their seat)


@dataclass
class SchedulerOutput:
    token_budget: int
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def spare_tokens(self) -> int:
        """Budget left for speculative tokens after prefill chunks and decode roots."""
        return max(0, self.token_budget - self.num_batched_tokens)

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    @property
    def num_context_tokens(self) -> int:
        """Cached tokens the step's attention reads (each sequence's, summed)."""
        return sum(c.start for c in self.chunks)

    @property
    def num_context_pairs(self) -> int:
        """Further query x cached-token pairs beyond one query per sequence (see the cost model).
        Worked example: a 512-token chunk after 1000 cached tokens and a decode after 300: 511 x 1000."""
        return sum((c.num_new_tokens - 1) * c.start for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


def _ordered(request: Request) -> bool:
    """Waiting requests that _next_waiting may take out of FCFS order."""
    return request.first_token_time is not None or request.params.slo.ttft_ms is not None or request.best_effort


class _Budget:
    """A step's token budget: `total` for everything, `prefill` for prompt/recompute chunks.
    Each decoding request also holds back `spec` tokens of the total for its draft tree."""

    def __init__(self, total: int, prefill: int | None) -> None:
        self.total = total
        self.prefill = total if prefill is None else min(total, prefill)

    def grant(self, num_pending: int) -> int:
        if num_pending == 1:
            return min(1, self.total)
        return min(num_pending, self.total, self.prefill)

    def take(self, n: int, num_pending: int, spec: int) -> None:
        if num_pending == 1:
            self.total -= n + spec
        else:
            self.total -= n
            self.prefill -= n


class Scheduler:
    def __init__(
        self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int, num_spec_tokens_per_seq: int = 0
    ) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Budget held back per decoding request for its draft tokens, so prefill can't take it all.
        self.num_spec_tokens_per_seq = num_spec_tokens_per_seq
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: oldest first, newest preempted first
        self._num_waiting_ordered = 0  # waiting requests not served FCFS (preempted or with a TTFT deadline)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        self._num_waiting_ordered += _ordered(request)

    def schedule(self, limits: StepLimits | None = None) -> SchedulerOutput:
        """One step, within the scheduler's own limits and this step's `limits` (see StepLimits)."""
        limits = limits or StepLimits()
        budget = self.max_num_batched_tokens
        if limits.max_step_tokens is not None:
            budget = min(budget, limits.max_step_tokens)
        out = SchedulerOutput(budget)
        prefill = _Budget(budget, limits.max_prefill_tokens)
        spec = limits.num_spec_tokens_per_seq
        paused = limits.pause_best_effort
        self._schedule_running(out, prefill, self.num_spec_tokens_per_seq if spec is None else spec, paused)
        if not out.preempted:  # after a preemption memory is tight: don't admit new work
            self._admit_waiting(out, prefill, limits.max_new_requests, paused)
        return out

    def _schedule_running(
        self, out: SchedulerOutput, budget: _Budget, num_spec_tokens_per_seq: int, pause_best_effort: bool
    ) -> None:
        i = 0  # (paused best-effort requests hold no seat: more than max_num_seqs may be running)
        while i < len(self.running) and budget.total > 0 and len(out.chunks) < self.max_num_seqs:
            request = self.running[i]
            n = 0 if pause_best_effort and request.best_effort else budget.grant(request.num_pending_tokens)
            if n == 0:
                i += 1
                continue
            # Out of blocks: preempt the newest running request until this one fits.
            while not self.kv.can_reserve(request.request_id, n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                break  # it preempted itself: everything after it is gone too
            slot_ids = self.kv.reserve(request.request_id, n)
            out.chunks.append(ScheduledChunk(request, n, slot_ids))
            budget.take(n, request.num_pending_tokens, num_spec_tokens_per_seq)
            i += 1

    def _admit_waiting(
        self, out: SchedulerOutput, budget: _Budget, max_new: int | None, pause_best_effort: bool
    ) -> None:
        num_seats = len(self.running)  # a paused best-effort request keeps its KV, not its seat
        if pause_best_effort:
            num_seats -= sum(1 for r in self.running if r.best_effort)
        num_new = self.max_num_seqs - num_seats if max_new is None else min(self.max_num_seqs - num_seats, max_new)
        for _ in range(num_new):
            if not self.waiting or budget.total <= 0:
                return
            request = self._next_waiting()
            if pause_best_effort and request.best_effort:
                return  # (best-effort requests wait last in line)
            # Its tokens' longest prefix already in the KV cache (prefix caching) is not recomputed.
            cached = self.kv.cached_prefix(request.all_ids)
            num_pending = request.num_tokens - len(cached) * self.kv.block_size
            n = budget.grant(num_pending)
            if n == 0 or not self.kv.can_admit(cached, n):
                return  # does not fit now: it waits for budget or blocks
            self._remove_waiting(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            request.num_computed_tokens = self.kv.admit(request.request_id, request.all_ids, cached)
            if request.num_preemptions == 0:
                request.num_cached_tokens = min(request.num_computed_tokens, len(request.prompt_ids))
            out.chunks.append(ScheduledChunk(request, n, self.kv.reserve(request.request_id, n)))
            budget.take(n, num_pending, 0)

    def _next_waiting(self) -> Request:
        """FCFS, except that requests with a TTFT deadline go by deadline, preempted requests
        (which already have their first token) go first, and best-effort requests go last."""
        if not self._num_waiting_ordered:
            return self.waiting[0]  # all FCFS: no need to look further (thousands may wait)
        best, best_key = self.waiting[0], None
        for position, request in enumerate(self.waiting):
            if request.first_token_time is not None:
                key = (request.best_effort, -1.0, position)
            elif request.params.slo.ttft_ms is not None:
                key = (request.best_effort, request.arrival_time + request.params.slo.ttft_ms / 1000.0, position)
            else:
                key = (request.best_effort, float("inf"), position)
            if best_key is None or key < best_key:
                best, best_key = request, key
        return best

    def demote(self, request: Request) -> None:
        """Its SLO can no longer be met: serve it after every request that can meet its own."""
        if request.status is RequestStatus.WAITING and not _ordered(request):
            self._num_waiting_ordered += 1
        request.best_effort = True

    def _preempt(self, request: Request) -> None:
        """Free the request's KV and put it back at the head of the queue to recompute later."""
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)
        self._num_waiting_ordered += _ordered(request)

    def _remove_waiting(self, request: Request) -> None:
        self.waiting.remove(request)
        self._num_waiting_ordered -= _ordered(request)

    def finish(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self._remove_waiting(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
