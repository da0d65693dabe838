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
    def is_empty(self) -> bool:
        return not self.chunks


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

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(self.max_num_batched_tokens)
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:  # after a preemption memory is tight: don't admit new work
            self._admit_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.num_pending_tokens, budget)
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
            budget -= n + (self.num_spec_tokens_per_seq if request.num_pending_tokens == 1 else 0)
            i += 1
        return budget

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            n = min(request.num_pending_tokens, budget)
            if not self.kv.can_reserve(request.request_id, n):
                break  # does not fit now: it waits for blocks to be freed
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.chunks.append(ScheduledChunk(request, n, self.kv.reserve(request.request_id, n)))
            budget -= n

    def _preempt(self, request: Request) -> None:
        """Free the request's KV and put it back at the head of the queue to recompute later."""
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def finish(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
