"""Which drafted tokens the target accepts: greedy and exact stochastic tree verification.

Greedy: walk down from the root while some child equals the target's argmax at the current node;
the argmax where the walk stops is the bonus token.

Sampling: the same walk, with the target's *sampled* token in place of its argmax. At a node of
depth d the target's token is drawn from its distribution p by inverse CDF at u_(k + d), the
request's uniform number for that output position (adaserve.engine.sampler); the walk goes down to
the child with that token, or stops and emits it as the bonus token. Each emitted token is then a
draw from the target's distribution after the accepted prefix, with fresh randomness per position,
so the output follows the target's distribution exactly whatever the tree, and equals, for a
seed, the output without speculation. Our tree children are the proposer's most likely tokens (a
deterministic draft, a point mass on each child), so this accepts child x with probability p(x),
the same as multi-draft recursive rejection (SpecInfer) would, and stops at the same depth as
often; unlike rejection sampling, it needs no random number per tried child.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaserve.engine.sampler import sample_inverse_cdf
from adaserve.spec.tree import TreeLayout


@dataclass
class Acceptance:
    accepted_nodes: list[int]  # layout indices of the accepted path, root excluded, by depth
    bonus_token_id: int


def accept_greedy(layout: TreeLayout, target_token_ids: list[int]) -> Acceptance:
    """target_token_ids[i]: the target's next token after layout node i (its argmax, or its sample)."""
    node, path = 0, []
    while True:
        want = target_token_ids[node]
        child = next((c for c in layout.children[node] if layout.token_ids[c] == want), None)
        if child is None:
            return Acceptance(path, want)
        path.append(child)
        node = child


def accept_sampled(layout: TreeLayout, target_probs: torch.Tensor, uniforms: torch.Tensor) -> Acceptance:
    """target_probs: [num_nodes, vocab] on CPU, the target's distribution after each node;
    uniforms: [max depth + 1], uniforms[d] the request's uniform number for the token after a node
    of depth d (the root is depth 0)."""
    node_uniforms = uniforms[torch.tensor(layout.depths)]  # [num_nodes]
    return accept_greedy(layout, sample_inverse_cdf(target_probs, node_uniforms))
