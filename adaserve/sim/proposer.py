"""A Proposer for the simulator: candidate trees grown layer by layer exactly as the draft model
proposer grows them (the same `grow_layer` and the policy's `expand`), with each frontier node's
offer drawn from the acceptance model instead of computed by a draft model.

The target's choice at each node on its path is kept aside (`target_choices`), so verification
can run the engine's own greedy acceptance walk (which never leaves that path). It also lists the
draft passes a real draft model would run (the sync of newly committed tokens, then one pass per
fed layer) with the shapes the engine would log for them (adaserve.engine.step_log.pass_record),
for the cost model.
Synthetic token ids (adaserve.sim.acceptance.DrawnOffer): child i of a node is token i + 1;
-1 (NO_MATCH) means "no drafted child matches".
Nodes on the target's path (the root, then each such node's picked child) ask the acceptance model
for the output position they predict: a recorded prompt replays its own trace there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from adaserve.engine.step_log import PassRecord, pass_record
from adaserve.request import Request
from adaserve.sim.acceptance import NO_MATCH, AcceptanceModel, OfferSource
from adaserve.spec.policies import SpecPolicy, grow_layer
from adaserve.spec.tree import CandidateTree, TreeLayout


@dataclass
class _Drafting:
    """One request's drafting state."""

    source: OfferSource  # what its offers are drawn from (by category and prompt)
    root_position: int = 0  # this step: the output position its root predicts
    path_node: int = 0  # this step: the frontier's node on the target's path, -1 once the tree left it
    # This step: node on the target's path -> the token the target picks after it. Only the path
    # matters: the greedy acceptance walk never leaves it.
    choices: dict[int, int] = field(default_factory=dict)
    frontier: list[int] = field(default_factory=list)  # this step: the nodes the next layer grows from
    num_fed: int = 0  # this step: tree nodes already fed to the draft (in its cache)


class SimProposer:
    def __init__(self, acceptance: AcceptanceModel, rng: random.Random, max_sync_tokens: int = 512) -> None:
        self.acceptance, self.rng = acceptance, rng
        self.max_sync_tokens = max_sync_tokens  # as DraftModelProposer: longer backlogs sync in chunks
        self.synced: dict[str, int] = {}  # committed tokens the draft has seen, per request
        self.draft_passes: list[PassRecord] = []  # of the last propose()
        self._drafting: dict[str, _Drafting] = {}

    def add(self, request_id: str, category: str, prompt_key: str = "") -> None:
        """A new request: acceptance differs by task (category) and by prompt."""
        self._drafting[request_id] = _Drafting(self.acceptance.source(category, prompt_key))

    def free(self, request_id: str, finished: bool) -> None:
        self.synced.pop(request_id, None)
        if finished:
            self._drafting.pop(request_id, None)
        elif request_id in self._drafting:  # preempted: it keeps its source
            self._drafting[request_id].choices = {}

    def take_passes(self) -> list[PassRecord]:
        """The draft passes of the last propose() (a step that proposed nothing ran none)."""
        passes, self.draft_passes = self.draft_passes, []
        return passes

    def propose(self, requests: list[Request], policy: SpecPolicy) -> list[CandidateTree]:
        trees = [CandidateTree.root_only(r.request_id, r.all_ids[-1]) for r in requests]
        for r in requests:
            if r.request_id not in self._drafting:
                self.add(r.request_id, "")
            # The root predicts output token num_output_tokens; the target's path starts there.
            state = self._drafting[r.request_id]
            state.root_position, state.path_node, state.choices = r.num_output_tokens, 0, {}
            state.frontier, state.num_fed = [0], 0
        ready, sync = self._sync(requests)
        self.draft_passes = [sync] if sync.num_seqs else []
        growing = [(r, tree, self._drafting[r.request_id]) for r, tree in zip(requests, trees) if r.request_id in ready]
        for layer in range(1, policy.depth + 1):
            grown = []
            for r, tree, state in growing:
                if self._grow(tree, state, policy, layer):  # its frontier is now the new nodes
                    grown.append((r, tree, state))
            growing = grown
            if layer == policy.depth or not growing:
                break
            # The layer is fed after each request's committed tokens and its earlier layers' nodes.
            shapes = [(len(state.frontier), r.num_tokens + state.num_fed) for r, _, state in growing]
            for _, _, state in growing:
                state.num_fed += len(state.frontier)
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

    def _grow(self, tree: CandidateTree, state: _Drafting, policy: SpecPolicy, layer: int) -> list[int]:
        """Grow the request's frontier by a layer; the new nodes become its frontier."""
        parents, path_node, depth = state.frontier, state.path_node, layer - 1  # (the frontier's depth)
        # The frontier's node on the path predicts output position root + depth; the rest draw any record.
        index = parents.index(path_node) if path_node >= 0 else -1
        on_path = {index: state.root_position + depth} if index >= 0 else {}
        offers = state.source.offers(depth, policy.top_k, self.rng, len(parents), on_path)
        new_nodes = grow_layer(tree, parents, offers, policy, layer)
        if index >= 0:  # the target's pick: the path goes on if the policy kept that child
            choice = state.choices[path_node] = offers[index].target_choice
            state.path_node = -1
            for node in new_nodes:
                if tree.parents[node] == path_node and tree.token_ids[node] == choice:
                    state.path_node = node
                    break
        state.frontier = new_nodes
        return new_nodes

    def target_choices(self, request_id: str, layout: TreeLayout) -> list[int]:
        """Per layout node, the token the target picks after it (what its argmax would be): known on
        the target's path, NO_MATCH elsewhere (the greedy walk never reads those)."""
        state = self._drafting.get(request_id)
        choices = state.choices if state is not None else {}
        return [choices.get(node, NO_MATCH) for node in layout.source_nodes]
