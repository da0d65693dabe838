"""A Proposer for the simulator: candidate trees grown layer by layer exactly as the draft model
proposer grows them (the same `grow_layer` and the policy's `expand`), with each frontier node's
offer drawn from the acceptance model instead of computed by a draft model.

The target's choice at each expanded node is kept aside (`target_choices`), so verification can
run the engine's own greedy acceptance walk. It also lists the draft passes a real draft model
would run (the sync of newly committed tokens, then one pass per fed layer) with the shapes the
engine would log for them (adaserve.engine.step_log.pass_record), for the cost model.
Synthetic token ids (adaserve.sim.acceptance.DrawnOffer): child i of a node is token i + 1;
-1 (NO_MATCH) means "no drafted child matches".
Nodes on the target's path (the root, then each such node's picked child) ask the acceptance model
for the output position they predict: a recorded prompt replays its own trace there.
"""

from __future__ import annotations

import random

from adaserve.engine.step_log import PassRecord, pass_record
from adaserve.request import Request
from adaserve.sim.acceptance import NO_MATCH, AcceptanceModel
from adaserve.spec.policies import SpecPolicy, grow_layer
from adaserve.spec.tree import CandidateTree, TreeLayout



class SimProposer:
    def __init__(self, acceptance: AcceptanceModel, rng: random.Random, max_sync_tokens: int = 512) -> None:
        self.acceptance, self.rng = acceptance, rng
        self.max_sync_tokens = max_sync_tokens  # as DraftModelProposer: longer backlogs sync in chunks
        self.synced: dict[str, int] = {}  # committed tokens the draft has seen, per request
        # Per request: node on the target's path -> the token the target picks after it. Only the
        # path matters: the greedy acceptance walk never leaves it.
        self.choices: dict[str, dict[int, int]] = {}
        self.draft_passes: list[PassRecord] = []  # of the last propose()
        self.sources: dict[str, tuple[str, str]] = {}  # per request: (category, prompt key) its acceptance is drawn for
        # Per request, this step: (output position the root predicts, the frontier's node on the
        # target's path, -1 once the tree has left it).
        self._path: dict[str, tuple[int, int]] = {}

    def add(self, request_id: str, category: str, prompt_key: str = "") -> None:
        """A new request: acceptance differs by task (category) and by prompt."""
        self.sources[request_id] = (category, prompt_key)

    def free(self, request_id: str) -> None:
        self.synced.pop(request_id, None)
        self.choices.pop(request_id, None)  # (a preempted request keeps its source)
        self._path.pop(request_id, None)

    def finish(self, request_id: str) -> None:
        """A finished request (already freed): forget its source too."""
        self.sources.pop(request_id, None)

    def propose(self, requests: list[Request], policy: SpecPolicy) -> list[CandidateTree]:
        trees = [CandidateTree.root_only(r.request_id, r.all_ids[-1]) for r in requests]
        for r in requests:
            self.choices[r.request_id] = {}
            # The root predicts output token num_output_tokens; the target's path starts there.
            self._path[r.request_id] = (r.num_output_tokens, 0)
        ready, sync = self._sync(requests)
        self.draft_passes = [sync] if sync.num_seqs else []
        frontier = {r.request_id: [0] for r in requests if r.request_id in ready}
        num_fed = dict.fromkeys(frontier, 0)  # per request: tree nodes already in the draft's cache
        for layer in range(1, policy.depth + 1):
            new_nodes = {}
            for tree in trees:
                if tree.request_id in frontier:
                    new_nodes[tree.request_id] = self._grow(tree, frontier[tree.request_id], policy, layer)
            frontier = {rid: nodes for rid, nodes in new_nodes.items() if nodes}
            if layer == policy.depth or not frontier:
                break
            # The layer is fed after each request's committed tokens and its earlier layers' nodes.
            shapes = [(len(frontier[r.request_id]), r.num_tokens + num_fed[r.request_id]) for r in requests
                      if r.request_id in frontier]
            for rid, nodes in frontier.items():
                num_fed[rid] += len(nodes)
            self.draft_passes.append(pass_record("draft", shapes, sum(n for n, _ in shapes)))
        return trees

    def _sync(self, requests: list[Request]) -> tuple[set[str], PassRecord]:
        """Feed each request's newly committed tokens (one pass for all); returns the requests that
        are fully synced (they draft this step) and the pass (logits of those requests' last tokens)."""
        ready, shapes = set(), []
        for r in requests:
            start = self.synced.get(r.request_id, 0)
            n = min(r.num_tokens - start, self.max_sync_tokens)
            if n <= 0:
                continue
            self.synced[r.request_id] = start + n
            shapes.append((n, start))
            if start + n == r.num_tokens:
                ready.add(r.request_id)
        return ready, pass_record("draft", shapes, len(ready))

    def _grow(self, tree: CandidateTree, parents: list[int], policy: SpecPolicy, layer: int) -> list[int]:
        category, prompt_key = self.sources.get(tree.request_id, ("", ""))
        root_position, path_node = self._path[tree.request_id]
        depth = layer - 1  # the frontier's
        # The frontier's node on the path predicts output position root + depth; the rest draw any record.
        index = parents.index(path_node) if path_node >= 0 else -1
        on_path = {index: root_position + depth} if index >= 0 else {}
        offers = self.acceptance.offers(depth, policy.top_k, self.rng, category, prompt_key, len(parents), on_path)
        new_nodes = grow_layer(tree, parents, offers, policy, layer)
        if index >= 0:  # the target's pick: the path goes on if the policy kept that child
            choice = self.choices[tree.request_id][path_node] = offers[index].target_choice
            picked = -1
            for node in new_nodes:
                if tree.parents[node] == path_node and tree.token_ids[node] == choice:
                    picked = node
                    break
            self._path[tree.request_id] = (root_position, picked)
        return new_nodes

    def target_choices(self, request_id: str, layout: TreeLayout) -> list[int]:
        """Per layout node, the token the target picks after it (what its argmax would be)."""
        choices = self.choices.get(request_id, {})
        return [choices.get(node, NO_MATCH) for node in layout.source_nodes]
