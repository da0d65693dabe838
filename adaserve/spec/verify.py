"""Which drafted tokens the target accepts: greedy and exact stochastic tree verification.

Greedy: walk down from the root while some child equals the target's argmax at the current node;
the argmax where the walk stops is the bonus token.

Sampling: multi-draft speculative sampling (recursive rejection, as in SpecInfer): at a node with
target distribution p, try its children in order. Child x, drafted from distribution q, is accepted
with probability min(1, p(x) / q(x)); on rejection p becomes the residual norm(max(0, p - q)) and
the next child is tried; when all are rejected the bonus token is sampled from the residual. Our
tree children are the proposer's most likely tokens, a deterministic choice, so each child's q is
a point mass on it: acceptance is p(x) and the residual is p with x removed. The output then
follows the target's distribution exactly, whatever the selection policy kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaserve.spec.tree import TreeLayout


@dataclass
class Acceptance:
    accepted_nodes: list[int]  # layout indices of the accepted path, root excluded, by depth
    bonus_token_id: int


def accept_greedy(layout: TreeLayout, target_argmax: list[int]) -> Acceptance:
    """target_argmax[i]: the target's argmax next token after layout node i."""
    node, path = 0, []
    while True:
        want = target_argmax[node]
        child = next((c for c in layout.children[node] if layout.token_ids[c] == want), None)
        if child is None:
            return Acceptance(path, want)
        path.append(child)
        node = child


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what is left of p after a draft from q was rejected. [vocab]"""
    r = (p - q).clamp_min_(0)
    total = r.sum()
    return r / total if total > 0 else p


def accept_sampled(layout: TreeLayout, target_probs: torch.Tensor, generator: torch.Generator) -> Acceptance:
    """target_probs: [num_nodes, vocab] on CPU, the target's distribution after each node."""
    node, path = 0, []
    while True:
        p = target_probs[node]
        for child in layout.children[node]:
            x = layout.token_ids[child]
            q = torch.zeros_like(p)
            q[x] = 1.0  # a deterministic draft: point mass on x
            if torch.rand((), generator=generator) < torch.clamp(p[x] / q[x], max=1.0):
                path.append(child)
                node = child
                break
            p = residual(p, q)
        else:
            return Acceptance(path, int(torch.multinomial(p, 1, generator=generator)))
