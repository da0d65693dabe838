"""Speculation policies: how candidate trees grow, and which nodes get verified.

A policy answers two questions and nothing else (pure Python, no torch):
  expand  - while drafting, which of a layer's candidate children stay in the tree;
  select  - which nodes of each request's candidate tree the target verifies, within a budget.
The SLO-aware AdaServe policy implements the same interface in adaserve.sched.
"""

from __future__ import annotations

import math
from operator import attrgetter
from dataclasses import dataclass, field
from typing import Protocol

from adaserve.spec.tree import CandidateTree, Offer


@dataclass(slots=True)
class Child:
    """A candidate child offered by the proposer for a frontier node."""

    parent: int  # candidate-tree node index
    token_id: int
    logprob: float  # draft log-prob of this token given the parent's path
    path_logprob: float  # parent's path log-prob + logprob


@dataclass
class SeqState:
    """What an SLO-aware policy knows about one decoding request."""

    tpot_ms: float | None  # its TPOT target, None when it has none
    first_token_time: float | None
    num_output_tokens: int
    num_context_tokens: int  # tokens already in its KV cache


@dataclass
class SelectionContext:
    budget: int  # drafted nodes this step may verify in all (roots are not part of it)
    num_batched_tokens: int = 0  # tokens already in the pass: prefill chunks and tree roots
    now: float = 0.0  # the engine clock
    seqs: list[SeqState] = field(default_factory=list)  # aligned with the trees


class SpecPolicy(Protocol):
    name: str
    depth: int  # draft layers this step
    top_k: int  # children offered per frontier node
    max_tokens_per_seq: int  # most drafted nodes it ever verifies per request and step

    def begin_step(self, num_requests: int, num_context_tokens: int) -> None:
        """Before drafting: adapt depth/width to the load (fixed policies do nothing)."""
        ...

    def expand(self, layer: int, children: list[Child]) -> list[Child]:
        """Of one request's candidate children at `layer` (1-based), the ones that stay."""
        ...

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        """Per tree, the candidate node indices to verify (root implied), at most ctx.budget in all."""
        ...

    def record(self, num_proposed_depth: int, num_accepted: int) -> None:
        """After verifying one request's tree: its depth and how many drafted tokens were accepted."""
        ...


class FixedPolicy:
    """Shared by the fixed-shape policies: no adaptation, no feedback."""

    name: str
    depth: int
    top_k: int
    max_tokens_per_seq: int

    def begin_step(self, num_requests: int, num_context_tokens: int) -> None:
        pass

    def record(self, num_proposed_depth: int, num_accepted: int) -> None:
        pass


def grow_layer(tree: CandidateTree, parents: list[int], offers: list[Offer], policy: SpecPolicy, layer: int) -> list[int]:
    """Offer each frontier node's children (offers[i] belongs to parents[i]); add the ones the
    policy keeps to the tree, grouped by parent and most likely first. Returns the new nodes."""
    children = []
    never = -math.inf  # a token the draft rules out is never offered
    for parent, offer in zip(parents, offers):
        tree.offers[parent] = offer
        base = tree.path_logprobs[parent]
        children += [Child(parent, t, lp, base + lp) for t, lp in zip(offer.token_ids, offer.logprobs) if lp > never]
    kept = policy.expand(layer, children)
    kept.sort(key=lambda c: (c.parent, -c.logprob))
    return [tree.add(c.parent, c.token_id, c.logprob) for c in kept]


def top_by_path_prob(children: list[Child], n: int) -> list[Child]:
    """The n most probable paths; ties keep the offer order (reverse sorting is stable too)."""
    return sorted(children, key=attrgetter("path_logprob"), reverse=True)[:n]


def best_nodes(tree: CandidateTree, n: int) -> list[int]:
    """The n highest-f non-root nodes. f(child) <= f(parent), and ties go to the shallower node,
    so the result is always connected."""
    return tree.ranked_nodes()[:n]


def split_budget(trees: list[CandidateTree], budget: int, want: list[int]) -> list[int]:
    """Give each tree up to what it wants, evenly from `budget` (fixed policies have no priorities)."""
    quota = [0] * len(trees)
    remaining = budget
    active = [i for i, w in enumerate(want) if w > 0]
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for i in list(active):
            give = min(share, want[i] - quota[i], remaining)
            quota[i] += give
            remaining -= give
            if quota[i] == want[i]:
                active.remove(i)
            if remaining == 0:
                break
    return quota


class ChainPolicy(FixedPolicy):
    """vLLM-Spec style: one chain of the draft's top-1 tokens, `length` deep."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError("chain length must be >= 1")
        self.name, self.depth, self.top_k = f"chain:{length}", length, 1
        self.max_tokens_per_seq = length

    def expand(self, layer: int, children: list[Child]) -> list[Child]:
        return top_by_path_prob(children, 1)

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        quotas = split_budget(trees, ctx.budget, [t.num_nodes - 1 for t in trees])
        return [best_nodes(t, q) for t, q in zip(trees, quotas)]


class StaticTreePolicy(FixedPolicy):
    """SpecInfer style: a fixed shape; widths[l] = children kept per node at depth l + 1."""

    def __init__(self, widths: tuple[int, ...] = (1, 1, 3, 1, 1, 1, 1, 1)) -> None:
        if not widths or min(widths) < 1:
            raise ValueError("static tree widths must be >= 1")
        self.widths = tuple(widths)
        self.name, self.depth, self.top_k = "static-tree", len(widths), max(widths)
        self.max_tokens_per_seq = sum(math.prod(widths[: i + 1]) for i in range(len(widths)))

    def expand(self, layer: int, children: list[Child]) -> list[Child]:
        kept, width = [], self.widths[layer - 1]
        for parent in dict.fromkeys(c.parent for c in children):
            kept += top_by_path_prob([c for c in children if c.parent == parent], width)
        return kept

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        quotas = split_budget(trees, ctx.budget, [t.num_nodes - 1 for t in trees])
        return [best_nodes(t, q) for t, q in zip(trees, quotas)]


class DynamicTreePolicy(FixedPolicy):
    """EAGLE-2 style: grow top-`width` nodes per layer by path probability, verify the best
    `num_nodes` of them per request."""

    def __init__(self, num_nodes: int = 16, depth: int = 6, width: int = 4) -> None:
        if min(num_nodes, depth, width) < 1:
            raise ValueError("dynamic tree sizes must be >= 1")
        self.num_nodes, self.width = num_nodes, width
        self.name, self.depth, self.top_k = "dynamic-tree", depth, width
        self.max_tokens_per_seq = num_nodes

    def expand(self, layer: int, children: list[Child]) -> list[Child]:
        return top_by_path_prob(children, self.width)

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        quotas = split_budget(trees, ctx.budget, [min(self.num_nodes, t.num_nodes - 1) for t in trees])
        return [best_nodes(t, q) for t, q in zip(trees, quotas)]


def make_policy(spec: str) -> SpecPolicy | None:
    """'none' | 'chain:K' | 'static-tree[:1,1,3,...]' | 'dynamic-tree[:N[:DEPTH[:WIDTH]]]'."""
    name, _, arg = spec.partition(":")
    try:
        if name == "none":
            return None
        if name == "chain":
            return ChainPolicy(int(arg or 4))
        if name == "static-tree":
            return StaticTreePolicy(tuple(int(w) for w in arg.split(",")) if arg else (1, 1, 3, 1, 1, 1, 1, 1))
        if name == "dynamic-tree":
            return DynamicTreePolicy(*(int(a) for a in arg.split(":") if a))
    except ValueError as e:
        raise ValueError(f"bad speculation policy {spec!r}: {e}") from e
    raise ValueError(f"unknown speculation policy {spec!r} (none, chain:K, static-tree, dynamic-tree)")
