"""Proposers draft candidate token trees: a small draft model, or n-gram prompt lookup.

Both return one CandidateTree per request, rooted at the request's last committed token (its
pending token). The policy decides how each layer grows (`expand`); proposers do the drafting.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from adaserve.engine.executor import ModelExecutor
from adaserve.engine.grammar import apply_bitmask
from adaserve.engine.logits_process import tree_paths
from adaserve.request import Request
from adaserve.sampling import SamplingParams
from adaserve.spec.policies import SpecPolicy, grow_layer
from adaserve.spec.tree import CandidateTree, Offer


class Proposer(Protocol):
    def propose(self, requests: list[Request], policy: SpecPolicy) -> list[CandidateTree]: ...

    def free(self, request_id: str, finished: bool) -> None:
        """Drop the request's draft state: preempted (it comes back) or finished."""
        ...


def draft_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[n, vocab] draft logits -> log-probs that estimate what the target will accept.

    Greedy requests use the plain softmax: P(draft token is the target's argmax) is what matters,
    and a one-hot would carry no estimate. Sampled requests use their own temperature / top-k / top-p.
    """
    from adaserve.engine.sampler import logits_to_probs

    if params.logit_bias:  # (a banned token is not worth proposing; penalties are left to the target)
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        logits = logits.float().index_add(
            -1, ids, torch.tensor(list(params.logit_bias.values()), device=logits.device).expand(logits.shape[0], -1)
        )
    if params.greedy:
        return logits.float().log_softmax(-1)
    return logits_to_probs(logits, params).log()


class DraftModelProposer:
    """A draft model in the same engine, with its own paged KV cache of the committed tokens.

    Each call first feeds the draft the tokens committed since its last call (the accepted
    tokens and the bonus token; at first the whole prompt), then drafts `policy.depth` layers,
    one batched forward per layer; tree tokens go into speculative slots that are rolled back.
    """

    def __init__(self, executor: ModelExecutor, max_sync_tokens: int = 512) -> None:
        self.executor = executor
        self.kv = executor.kv
        self.max_sync_tokens = max_sync_tokens

    def free(self, request_id: str, finished: bool) -> None:
        self.kv.free(request_id)

    def _synced(self, request_id: str) -> int:
        return self.kv.num_slots.get(request_id, 0)

    def propose(self, requests: list[Request], policy: SpecPolicy) -> list[CandidateTree]:
        trees = {r.request_id: CandidateTree.root_only(r.request_id, r.all_ids[-1]) for r in requests}
        drafting, logits = self._sync(requests)
        frontier = {r.request_id: [0] for r in drafting}  # tree nodes whose children come next
        for layer in range(1, policy.depth + 1):
            new_nodes = self._grow_layer(drafting, trees, frontier, logits, policy, layer)
            drafting = [r for r in drafting if new_nodes[r.request_id]]
            if layer == policy.depth or not drafting:
                break
            logits = self._feed_layer(drafting, trees, new_nodes)
            frontier = {r.request_id: new_nodes[r.request_id] for r in drafting}
        for r in requests:  # roll back the speculative slots
            if r.request_id in self.kv.num_slots:
                self.kv.truncate(r.request_id, min(self._synced(r.request_id), r.num_tokens))
        return [trees[r.request_id] for r in requests]

    def _sync(self, requests: list[Request]) -> tuple[list[Request], torch.Tensor | None]:
        """Feed each request's unsynced committed tokens; returns those ready to draft and the
        logits [num_ready, vocab] after their roots.

        A request far behind (a long prompt) syncs one chunk and does not draft this step; so do
        requests the draft cache has no room for.
        """
        seqs, ready, rows, offset, synced = [], [], [], 0, []
        for r in requests:
            if r.request_id not in self.kv.block_tables:  # first sync: start from the draft's prefix cache
                cached = self.kv.cached_prefix(r.all_ids)
                if not self.kv.can_admit(cached, 1):
                    continue
                self.kv.admit(r.request_id, r.all_ids, cached)
            start = self._synced(r.request_id)
            n = min(r.num_tokens - start, self.max_sync_tokens)
            if n <= 0 or not self.kv.can_reserve(r.request_id, n):
                continue
            slots = self.kv.reserve(r.request_id, n)
            synced.append((r, start + n))
            seqs.append(
                self.executor.seq_input(
                    r.request_id, r.all_ids[start : start + n], list(range(start, start + n)), slots, start
                )
            )
            offset += n
            if start + n == r.num_tokens:
                ready.append(r)
                rows.append(offset - 1)
        hidden = self.executor.forward(seqs) if seqs else None
        for r, num_synced in synced:  # their KV is written now: full blocks go into the prefix cache
            self.kv.cache_blocks(r.request_id, r.all_ids, num_synced)
        if not ready:
            return [], None
        return ready, self.executor.logits(hidden, rows)

    def _grow_layer(self, requests, trees, frontier, logits, policy: SpecPolicy, layer: int) -> dict[str, list[int]]:
        """Offer the top-k children of every frontier node; keep what the policy keeps."""
        new_nodes: dict[str, list[int]] = {}
        row = 0
        for r in requests:
            parents, tree = frontier[r.request_id], trees[r.request_id]
            parent_logits = logits[row : row + len(parents)]  # [len(parents), vocab]
            row += len(parents)
            if r.grammar is not None:  # propose only what the grammar allows (-inf offers are dropped)
                paths = tree_paths(tree.token_ids, tree.parents)
                parent_logits = apply_bitmask(parent_logits, r.grammar.paths_bitmask([paths[p] for p in parents]))
            logprobs = draft_logprobs(parent_logits, r.params)  # [len(parents), vocab]
            top = logprobs.topk(min(policy.top_k, logprobs.shape[-1]), dim=-1)
            offers = [Offer(toks, lps) for toks, lps in zip(top.indices.tolist(), top.values.tolist())]
            new_nodes[r.request_id] = grow_layer(tree, parents, offers, policy, layer)
        return new_nodes

    def _feed_layer(self, requests, trees, new_nodes) -> torch.Tensor | None:
        """Run the draft on the layer just added; returns logits [sum of layer sizes, vocab].

        Tree node j >= 1 sits at draft cache position synced + j - 1 (root = synced - 1).
        """
        seqs = []
        for r in requests:
            tree, nodes, synced = trees[r.request_id], new_nodes[r.request_id], r.num_tokens
            if not self.kv.can_reserve(r.request_id, len(nodes)):
                continue
            num_prior = self._synced(r.request_id) - synced  # earlier layers' nodes in the cache
            slots = self.kv.reserve(r.request_id, len(nodes))
            mask = torch.zeros(len(nodes), num_prior + len(nodes), dtype=torch.bool)
            for i, node in enumerate(nodes):
                a = node
                while a > 0:
                    mask[i, a - 1] = True
                    a = tree.parents[a]
            positions = [synced - 1 + tree.depths[n] for n in nodes]
            seqs.append(
                self.executor.seq_input(
                    r.request_id, [tree.token_ids[n] for n in nodes], positions, slots, synced, mask
                )
            )
        if len(seqs) != len(requests):
            raise RuntimeError("draft KV cache is too small for the trees; raise its size")
        return self.executor.logits(self.executor.forward(seqs))


class NgramProposer:
    """Prompt lookup: find the latest earlier occurrence of the sequence's last n tokens (n from
    max_n down to min_n) and propose the tokens that followed it, as a chain of `policy.depth`.

    There is no draft model, so each drafted token gets the same fixed probability estimate.
    """

    def __init__(self, min_n: int = 1, max_n: int = 4, token_prob: float = 0.5) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("n-gram sizes need 1 <= min_n <= max_n")
        self.min_n, self.max_n = min_n, max_n
        self.logprob = math.log(token_prob)

    def free(self, request_id: str, finished: bool) -> None:
        pass

    def propose(self, requests: list[Request], policy: SpecPolicy) -> list[CandidateTree]:
        trees = []
        for r in requests:
            tree = CandidateTree.root_only(r.request_id, r.all_ids[-1])
            parent = 0
            for token in self.continuation(r.all_ids, policy.depth):
                parent = tree.add(parent, token, self.logprob)
            trees.append(tree)
        return trees

    def continuation(self, ids: list[int], length: int) -> list[int]:
        """Worked example: ids = [5 6 7 9 5 6], n = 2: the suffix [5 6] occurred at 0, so the
        proposal is what followed it: [7 9 5 ...] (up to `length` tokens)."""
        for n in range(min(self.max_n, len(ids) - 1), self.min_n - 1, -1):
            suffix = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start : start + n] == suffix:
                    return ids[start + n : start + n + length]
        return []
