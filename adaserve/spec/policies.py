"""Speculation policies: how candidate trees grow, and which nodes get verified.

A policy answers two questions and nothing else (pure Python, no torch):
  expand  - while drafting, which of a layer's candidate children stay in the tree;
  select  - which nodes of each request's candidate tree the target verifies, within a budget.
The SLO-aware AdaServe policy implements the same interface in adaserve.sched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from adaserve.spec.tree import CandidateTree, Offer


@dataclass(slots=True)
class LayerCandidates:
    """The children offered for one request's frontier at one layer: candidate i is token_ids[i]
    under tree node parents[i]. Grouped by parent in frontier order, each parent's offer in its
    order (most likely first). Parallel lists rather than one object per child: the simulator
    offers millions of children per run.

    Worked example (frontier [1, 2] with path log-probs -0.1 and -3.0, top-2 offers):
        parents        [1,    1,    2,     2   ]
        token_ids      [10,   11,   13,    14  ]
        path_logprobs  [-0.2, -0.6, -3.05, -3.2]   parent's path log-prob + the draft's log-prob
    """

    parents: list[int]
    token_ids: list[int]
    path_logprobs: list[float]

    def __len__(self) -> int:
        return len(self.parents)

    def subset(self, indices: list[int]) -> LayerCandidates:
        return LayerCandidates(
            [self.parents[i] for i in indices],
            [self.token_ids[i] for i in indices],
            [self.path_logprobs[i] for i in indices],
        )


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

    @property
    def num_context_tokens(self) -> int:
        """Tokens already in the decoding requests' KV caches, all together."""
        return sum(seq.num_context_tokens for seq in self.seqs)


class SpecPolicy(Protocol):
    name: str
    depth: int  # draft layers this step
    top_k: int  # children offered per frontier node
    max_tokens_per_seq: int  # most drafted nodes it ever verifies per request and step

    def begin_step(self, ctx: SelectionContext) -> None:
        """Before drafting: adapt depth/width to the load and the requests' SLOs (fixed policies do
        nothing)."""
        ...

    def expand(self, layer: int, children: LayerCandidates) -> list[int]:
        """Of one request's candidate children at `layer` (1-based), the indices of those that stay."""
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

    def begin_step(self, ctx: SelectionContext) -> None:
        pass

    def record(self, num_proposed_depth: int, num_accepted: int) -> None:
        pass


def grow_layer(
    tree: CandidateTree, parents: list[int], offers: Sequence[Offer], policy: SpecPolicy, layer: int
) -> list[int]:
    """Offer each frontier node's children (offers[i] belongs to parents[i]); add the ones the
    policy keeps to the tree in the candidates' order. With the frontier in tree order and each
    offer most likely first (a draft's top-k; the simulator's offers), that is grouped by parent
    and most likely first. Returns the new nodes."""
    tree.offers.update(zip(parents, offers))
    base = tree.path_logprobs
    children = LayerCandidates(
        [p for p, o in zip(parents, offers) for _ in o.token_ids],
        [t for o in offers for t in o.token_ids],
        [base[p] + lp for p, o in zip(parents, offers) for lp in o.logprobs],
    )
    if not math.isfinite(sum(children.path_logprobs)):  # (one C-level pass: this is the simulator's hot path)
        # A token the draft rules out (-inf) is never offered; nor one it gave no number (NaN).
        children = children.subset([i for i, lp in enumerate(children.path_logprobs) if lp > -math.inf])
    kept = children.subset(sorted(policy.expand(layer, children)))
    return tree.add_children(kept.parents, kept.token_ids, kept.path_logprobs)


def top_by_path_prob(children: LayerCandidates, n: int, among: list[int] | None = None) -> list[int]:
    """The indices of the n most probable paths (of `among`, default all), most probable first
    (ties keep the candidates' order: reverse sorting is stable too) unless all are kept."""
    indices = range(len(children)) if among is None else among
    if len(indices) <= n:  # all of them (e.g. the root's offer in the first layer)
        return list(indices)
    return sorted(indices, key=children.path_logprobs.__getitem__, reverse=True)[:n]


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

    def expand(self, layer: int, children: LayerCandidates) -> list[int]:
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

    def expand(self, layer: int, children: LayerCandidates) -> list[int]:
        by_parent: dict[int, list[int]] = {}
        for i, parent in enumerate(children.parents):
            by_parent.setdefault(parent, []).append(i)
        width = self.widths[layer - 1]
        return [i for among in by_parent.values() for i in top_by_path_prob(children, width, among)]

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

    def expand(self, layer: int, children: LayerCandidates) -> list[int]:
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
