"""Token trees: candidate trees from a proposer, and the selected tree the target verifies.

Pure Python. A tree's node 0 is its root: the request's last committed token, whose KV the target
has not computed yet; it is verified together with the drafted nodes and always yields at least
the bonus token. Nodes are stored parents-first (every parent index is smaller than its child's).

Worked example (root r = last committed token, context length 10):
    node          0(r)  1(a)  2(b)  3(c)  4(d)
    parents       -1    0     0     1     1       a, b are children of r; c, d children of a
    depths         0    1     1     2     2       target positions = 10 + depth
    ancestors     {0}  {0,1} {0,2} {0,1,3} {0,1,4}  the tree attention mask row of each node
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Offer:
    """The draft's top-k children of one expanded node, most likely first, kept by the policy or
    not: with the target's choice at that node it is one acceptance record for the simulator."""

    token_ids: list[int]
    logprobs: list[float]

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError("an offer needs one log-prob per token")


@dataclass
class CandidateTree:
    """Everything a proposer offers for one request; a policy selects a connected subset."""

    request_id: str
    token_ids: list[int]
    parents: list[int]
    depths: list[int]
    # log f(v): sum of draft log-probs along root -> v, our estimate of P(target accepts the path).
    path_logprobs: list[float]
    offers: dict[int, Offer] = field(default_factory=dict)  # per expanded node

    @classmethod
    def root_only(cls, request_id: str, root_token: int) -> CandidateTree:
        return cls(request_id, [root_token], [-1], [0], [0.0])

    @property
    def num_nodes(self) -> int:
        return len(self.token_ids)

    def add(self, parent: int, token_id: int, logprob: float) -> int:
        self.token_ids.append(token_id)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.path_logprobs.append(self.path_logprobs[parent] + logprob)
        return len(self.token_ids) - 1

    def add_children(self, parents: list[int], token_ids: list[int], path_logprobs: list[float]) -> list[int]:
        """Add nodes under parents already in the tree, each given its path log-prob (its parent's
        plus its own log-prob, as add() computes it); returns the new nodes."""
        start = len(self.token_ids)
        self.token_ids += token_ids
        self.parents += parents
        self.depths += [self.depths[p] + 1 for p in parents]
        self.path_logprobs += path_logprobs
        return list(range(start, len(self.token_ids)))

    def path_prob(self, node: int) -> float:
        return math.exp(self.path_logprobs[node])

    def ranked_nodes(self) -> list[int]:
        """Non-root nodes by decreasing f. The sort is stable and nodes are stored parents-first,
        so a child whose f equals its parent's (a draft probability of 1.0) still comes after it;
        any prefix of the ranking is a connected tree."""
        return sorted(range(1, self.num_nodes), key=self.path_logprobs.__getitem__, reverse=True)


@dataclass
class TreeLayout:
    """A selected subtree in verification order: what the target model is fed."""

    token_ids: list[int]
    parents: list[int]  # indices into this layout, -1 for the root
    depths: list[int]
    source_nodes: list[int]  # candidate-tree index of each layout node
    children: list[list[int]] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.token_ids)

    def ancestors(self, node: int) -> list[int]:
        """Root ... node, inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def mask_rows(self) -> list[list[int]]:
        """For each node, the layout indices it attends to (its ancestors and itself)."""
        return [self.ancestors(i) for i in range(self.num_nodes)]


def layout_tree(tree: CandidateTree, selected: list[int]) -> TreeLayout:
    """Root + the selected candidate nodes, re-indexed parents-first. The selection must be
    connected: every selected node's parent is the root or selected too."""
    nodes = [0] + sorted(set(selected) - {0})
    index = {node: i for i, node in enumerate(nodes)}
    parents = []
    for node in nodes:
        p = tree.parents[node]
        if p >= 0 and p not in index:
            raise ValueError(f"selection is not connected: node {node} without its parent {p}")
        parents.append(index[p] if p >= 0 else -1)
    children: list[list[int]] = [[] for _ in nodes]
    for i, p in enumerate(parents):
        if p >= 0:
            children[p].append(i)
    for kids in children:  # most likely first: the order stochastic verification tries them in
        if len(kids) > 1:
            kids.sort(key=lambda i: -tree.path_logprobs[nodes[i]])
    return TreeLayout(
        token_ids=[tree.token_ids[n] for n in nodes],
        parents=parents,
        depths=[tree.depths[n] for n in nodes],
        source_nodes=nodes,
        children=children,
    )
