"""Speculation's part of an engine step, around the target's pass (EngineCore.step calls each):

    propose:  the proposer drafts a candidate tree per decoding request, shaped by the policy
    select:   the policy picks the nodes to verify within the step's spare token budget
    attach:   reserve the selected nodes' KV slots and hang each tree on its chunk
    (the runner verifies: one target pass, then each tree's accepted path)
    commit:   keep the accepted path's tokens, drop the rest of the tree's KV, record statistics

Plain Python over the KV manager's integers: the runner moves KV data, the proposer runs the draft.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from adaserve.kv.manager import KVCacheManager
from adaserve.request import Request
from adaserve.sched.scheduler import ScheduledChunk, SchedulerOutput
from adaserve.spec.policies import SelectionContext, SeqState, SpecPolicy
from adaserve.spec.stats import EngineSpecStats, StepStats
from adaserve.spec.tree import CandidateTree, TreeLayout, layout_tree

if TYPE_CHECKING:
    from adaserve.spec.proposers import Proposer
    from adaserve.spec.verify import Acceptance


class SpecObserver(Protocol):
    """Sees every verified tree (e.g. `simulate record`'s offer recorder); the engine keeps none."""

    def on_verified(self, request: Request, tree: CandidateTree, layout: TreeLayout, acceptance: Acceptance) -> None:
        """Called before the step's new tokens are appended to the request."""
        ...


class SpecDecoder:
    def __init__(
        self,
        proposer: Proposer,
        policy: SpecPolicy,
        kv: KVCacheManager,
        clock: Callable[[], float],
        max_tree_tokens: int | None = None,
    ) -> None:
        self.proposer = proposer
        self.policy = policy
        self.kv = kv  # the target's
        self.clock = clock
        self.max_tree_tokens = max_tree_tokens or policy.max_tokens_per_seq  # the draft KV room is sized for this
        self.stats = EngineSpecStats()
        self.observers: list[SpecObserver] = []
        self._candidates: dict[str, CandidateTree] = {}  # this step's trees, until verified
        self._step_accepted = 0

    def propose(self, chunks: list[ScheduledChunk], step: SchedulerOutput) -> list[CandidateTree]:
        """Per decoding chunk, its request's candidate tree (root = its pending token)."""
        requests = [c.request for c in chunks]
        self.policy.begin_step(self._context(requests, step))
        if self.policy.depth > 0:
            return self.proposer.propose(requests, self.policy)
        # The policy chose not to speculate this step (e.g. SmartSpec under heavy load).
        return [CandidateTree.root_only(r.request_id, r.all_ids[-1]) for r in requests]

    def select(
        self, chunks: list[ScheduledChunk], trees: list[CandidateTree], step: SchedulerOutput
    ) -> list[list[int]]:
        """Per tree, the drafted nodes to verify: the policy's choice within the step's spare budget."""
        return self.policy.select(trees, self._context([c.request for c in chunks], step))

    def _context(self, requests: list[Request], step: SchedulerOutput) -> SelectionContext:
        return SelectionContext(
            budget=step.spare_tokens,
            num_batched_tokens=step.num_batched_tokens,
            now=self.clock(),
            seqs=[  # a best-effort request has no TPOT to keep
                SeqState(
                    None if r.best_effort else r.params.slo.tpot_ms,
                    r.first_token_time,
                    r.num_output_tokens,
                    r.num_computed_tokens,
                )
                for r in requests
            ],
        )

    def attach(self, chunks: list[ScheduledChunk], trees: list[CandidateTree], selections: list[list[int]]) -> None:
        for chunk, tree, selected in zip(chunks, trees, selections):
            self._candidates[chunk.request.request_id] = tree
            request = chunk.request
            # Tokens past max_tokens would be thrown away: don't verify deeper than what is left.
            room = request.params.max_tokens - request.num_output_tokens - 1
            selected = sorted([n for n in selected if tree.depths[n] <= room])  # parents-first prefix order
            while selected and not self.kv.can_reserve(request.request_id, len(selected)):
                selected.pop()  # out of KV blocks: speculate less (a prefix stays connected)
            chunk.tree = layout_tree(tree, selected)
            chunk.slot_ids = chunk.slot_ids + self.kv.reserve(request.request_id, len(selected))
            chunk.num_new_tokens = chunk.tree.num_nodes

    def commit(self, chunk: ScheduledChunk, acceptance: Acceptance) -> list[int]:
        """Keep the accepted path (the runner moved its KV into place), release the rest of the
        tree's slots, record statistics; returns the new tokens (accepted drafts + bonus)."""
        request, layout, start = chunk.request, chunk.tree, chunk.start
        accepted = acceptance.accepted_nodes
        self.kv.truncate(request.request_id, start + 1 + len(accepted))
        request.num_computed_tokens = start + 1 + len(accepted)
        depths = layout.depths[1:]
        self.stats.totals.record(depths, len(accepted))
        self.policy.record(max(depths, default=0), len(accepted))
        self._step_accepted += len(accepted)
        request.spec_stats.record(depths, len(accepted))
        tree = self._candidates.pop(request.request_id)
        for observer in self.observers:
            observer.on_verified(request, tree, layout, acceptance)
        return [layout.token_ids[i] for i in accepted] + [acceptance.bonus_token_id]

    def record_step(self, step: SchedulerOutput, draft_seconds: float, verify_seconds: float, now: float) -> None:
        trees = [c.tree for c in step.chunks if c.tree is not None]
        self.stats.steps.append(
            StepStats(
                time=now,
                num_requests=len(step.chunks),
                num_prefill_tokens=sum(c.num_new_tokens for c in step.chunks if c.tree is None),
                num_verified_tokens=sum(t.num_nodes for t in trees),
                num_proposed=sum(t.num_nodes - 1 for t in trees),
                num_accepted=self._step_accepted,
                draft_seconds=draft_seconds,
                verify_seconds=verify_seconds,
            )
        )
        self._step_accepted = 0

    def free(self, request_id: str, finished: bool) -> None:
        self.proposer.free(request_id, finished)
        self._candidates.pop(request_id, None)
