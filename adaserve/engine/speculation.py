"""Speculate -> select -> verify for one engine step, around the target's forward pass.

attach_trees: draft candidate trees for decoding requests, let the policy select nodes within
              the step's spare token budget, reserve their KV slots, hang them on the chunks;
verify:       after the target pass, accept a path per tree, move the accepted tokens' KV into
              place and drop the rest, in the target cache (the draft rolls itself back).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from adaserve.engine.executor import ModelExecutor
from adaserve.engine.sampler import Sampler, logits_to_probs
from adaserve.sched.scheduler import ScheduledChunk, SchedulerOutput
from adaserve.spec.policies import SelectionContext, SeqState, SpecPolicy
from adaserve.spec.proposers import Proposer
from adaserve.spec.stats import EngineSpecStats, OfferRecord, StepStats
from adaserve.spec.tree import CandidateTree, TreeLayout, layout_tree
from adaserve.spec.verify import Acceptance, accept_greedy, accept_sampled


class SpecDecoder:
    def __init__(
        self,
        proposer: Proposer,
        policy: SpecPolicy,
        target: ModelExecutor,
        sampler: Sampler,
        clock: Callable[[], float] = time.perf_counter,
        max_tree_tokens: int | None = None,
        record_traces: bool = True,
    ) -> None:
        self.proposer = proposer
        self.clock = clock
        self.policy = policy
        self.max_tree_tokens = max_tree_tokens or policy.max_tokens_per_seq  # the draft KV room is sized for this
        self.target = target
        self.kv = target.kv
        self.sampler = sampler
        self.stats = EngineSpecStats()
        # Per verified node (path probability, accepted?) for calibration curves, and offer records
        # (the simulator's input): the server and the simulator (which replays them) keep none.
        self.record_traces = record_traces
        self._candidates: dict[str, CandidateTree] = {}
        self._draft_seconds = 0.0
        self._step_accepted = 0

    def attach_trees(self, step: SchedulerOutput) -> None:
        self._draft_seconds, self._step_accepted = 0.0, 0
        chunks = [c for c in step.chunks if c.is_decode]
        if not chunks:
            return
        start = time.perf_counter()
        requests = [c.request for c in chunks]
        self.policy.begin_step(len(requests), sum(r.num_computed_tokens for r in requests))
        if self.policy.depth > 0:
            trees = self.proposer.propose(requests, self.policy)
        else:  # the policy chose not to speculate this step (e.g. SmartSpec under heavy load)
            trees = [CandidateTree.root_only(r.request_id, r.all_ids[-1]) for r in requests]
        ctx = SelectionContext(
            budget=step.spare_tokens,
            num_batched_tokens=step.num_batched_tokens,
            now=self.clock(),
            seqs=[
                SeqState(r.params.slo.tpot_ms, r.first_token_time, r.num_output_tokens, r.num_computed_tokens)
                for r in requests
            ],
        )
        selections = self.policy.select(trees, ctx)
        for chunk, tree, selected in zip(chunks, trees, selections):
            self._candidates[chunk.request.request_id] = tree
            self._attach(chunk, tree, selected)
        self._draft_seconds = time.perf_counter() - start

    def _attach(self, chunk: ScheduledChunk, tree: CandidateTree, selected: list[int]) -> None:
        request = chunk.request
        # Tokens past max_tokens would be thrown away: don't verify deeper than what is left.
        room = request.params.max_tokens - request.num_output_tokens - 1
        selected = sorted([n for n in selected if tree.depths[n] <= room])  # parents-first prefix order
        while selected and not self.kv.can_reserve(request.request_id, len(selected)):
            selected.pop()  # out of KV blocks: speculate less (a prefix stays connected)
        chunk.tree = layout_tree(tree, selected)
        chunk.slot_ids = chunk.slot_ids + self.kv.reserve(request.request_id, len(selected))
        chunk.num_new_tokens = chunk.tree.num_nodes

    def verify(self, chunk: ScheduledChunk, logits: torch.Tensor) -> list[int]:
        """logits: [num_nodes, vocab] for the chunk's tree. Commits the accepted path's KV and
        returns the new tokens (accepted drafts + bonus)."""
        request, layout = chunk.request, chunk.tree
        if request.params.greedy:
            acceptance = accept_greedy(layout, logits.argmax(-1).tolist())
        else:
            generator = self.sampler.generator(request.request_id, request.params)
            acceptance = accept_sampled(layout, logits_to_probs(logits, request.params).cpu(), generator)
        return self.commit(chunk, acceptance)

    def commit(self, chunk: ScheduledChunk, acceptance: Acceptance) -> list[int]:
        """Keep the accepted path's KV, drop the rest, record statistics; returns the new tokens."""
        request, layout, start = chunk.request, chunk.tree, chunk.start
        accepted = acceptance.accepted_nodes
        # Node i of the layout was written at position start + i; the accepted node at depth d
        # belongs at start + d. Sources are never behind their targets, so one copy is safe.
        src = [chunk.slot_ids[i] for i in accepted]
        dst = self.kv.slots(request.request_id, start + 1, len(accepted))
        if src != dst:
            self.target.kv_cache.copy_slots(src, dst)
        self.kv.truncate(request.request_id, start + 1 + len(accepted))
        request.num_computed_tokens = start + 1 + len(accepted)
        self._record(chunk, acceptance)
        return [layout.token_ids[i] for i in accepted] + [acceptance.bonus_token_id]

    def _record(self, chunk: ScheduledChunk, acceptance: Acceptance) -> None:
        layout, rid, accepted = chunk.tree, chunk.request.request_id, acceptance.accepted_nodes
        depths = layout.depths[1:]
        self.stats.totals.record(depths, len(accepted))
        self.policy.record(max(depths, default=0), len(accepted))
        self._step_accepted += len(accepted)
        chunk.request.spec_stats.record(depths, len(accepted))
        tree = self._candidates.pop(rid)
        if self.record_traces:
            on_path = set(accepted)
            for i in range(1, layout.num_nodes):
                self.stats.calibration.append((tree.path_prob(layout.source_nodes[i]), i in on_path))
            self._record_offers(tree, layout, acceptance, chunk.request.num_output_tokens)

    def _record_offers(
        self, tree: CandidateTree, layout: TreeLayout, acceptance: Acceptance, num_output_tokens: int
    ) -> None:
        """Every expanded node on the accepted path (root included) with the target's next token
        there: the accepted child's token, or the bonus token at the end of the path. The root
        predicts output token num_output_tokens (this step's tokens are not appended yet). And every
        expanded node off the target's path, with the draft's offer alone. (Offers are kept in the
        order nodes were expanded, parents first: the path's records come by depth.)"""
        path = [0] + [layout.source_nodes[i] for i in acceptance.accepted_nodes]
        chosen = [layout.token_ids[i] for i in acceptance.accepted_nodes] + [acceptance.bonus_token_id]
        picks = dict(zip(path, chosen))  # path node -> the token the target picks after it
        for node, offer in tree.offers.items():
            on_path = node in picks
            if not on_path and not _off_path(tree, node, picks):
                continue  # below the target's unverified pick: neither
            probs = [round(math.exp(lp), 5) for lp in offer.logprobs]
            depth = tree.depths[node]
            if on_path:
                hit = offer.token_ids.index(picks[node]) if picks[node] in offer.token_ids else -1
                self.stats.offers.append(OfferRecord(depth, probs, hit, num_output_tokens + depth))
            else:
                self.stats.off_path_offers.append(OfferRecord(depth, probs, -1, off_path=True))

    def record_step(self, step: SchedulerOutput, verify_seconds: float, now: float) -> None:
        trees = [c.tree for c in step.chunks if c.tree is not None]
        self.stats.steps.append(
            StepStats(
                time=now,
                num_requests=len(step.chunks),
                num_prefill_tokens=sum(c.num_new_tokens for c in step.chunks if c.tree is None),
                num_verified_tokens=sum(t.num_nodes for t in trees),
                num_proposed=sum(t.num_nodes - 1 for t in trees),
                num_accepted=self._step_accepted,
                draft_seconds=self._draft_seconds,
                verify_seconds=verify_seconds,
            )
        )

    def free(self, request_id: str) -> None:
        self.proposer.free(request_id)
        self._candidates.pop(request_id, None)


def _off_path(tree: CandidateTree, node: int, picks: dict[int, int]) -> bool:
    """True if the node lies below a child the target did not pick. Its branch leaves the path at
    the child of a path node; below the path's last node the target's pick is the bonus token, and
    a drafted child with that token is on the target's path though unverified (nor off: False).
    Worked example: path 0 -> 2 (the target picked 2's token, then token 7 after node 2);
    node 5 under node 1 (a sibling of 2): off; node 6 under 2 with token 7: not off."""
    branch = node
    while tree.parents[branch] not in picks:
        branch = tree.parents[branch]
    return tree.token_ids[branch] != picks[tree.parents[branch]]
