"""AdaServe's token selection: which drafted nodes of which requests one verification pass takes.
Plain Python over candidate trees; no torch.

f(v), the probability that the target accepts the whole root -> v path, is estimated by the draft's
path probability; a tree T yields 1 + sum_{v in T} f(v) tokens in expectation (1 = the bonus token).
f(child) <= f(parent), so taking any tree's nodes in decreasing f keeps every selection connected.

  SLO phase:        requests in descending requirement A; each takes its best nodes while
                    1 + sum f < A_cap = clamp(A, 1, depth + 1), |T| < n_max and budget remains.
  throughput phase: a k-way merge of all requests' remaining nodes by f (the global best next),
                    while budget remains and `keep_going(f, num_taken)` agrees.

Worked example (the paper's, B = 8 verified tokens = 2 roots + 6 drafted, depth 3, width 2):
    r0: A = 1.6, nodes f = 0.7, 0.3, ...       r1: A = 1.8, nodes f = 0.5, 0.4, 0.2, ...
    SLO phase, r1 first (larger A): takes 0.5 (1.5 < 1.8), then 0.4 (1.9: done); r0 takes 0.7 (1.7: done)
    throughput phase: the 3 left go to the globally best remaining nodes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from adaserve.spec.tree import CandidateTree

KeepGoing = Callable[[float, int, float], bool]


def slo_phase(
    trees: list[CandidateTree],
    ranked: list[list[int]],
    requirements: list[float | None],
    budget: int,
    max_depth: int,
    n_max: int,
) -> list[list[int]]:
    """Per tree, the prefix of its ranked nodes that covers its SLO requirement (None: no SLO)."""
    selected: list[list[int]] = [[] for _ in trees]
    order = sorted((i for i, a in enumerate(requirements) if a is not None), key=lambda i: -requirements[i])
    for i in order:
        a_cap = min(max(requirements[i], 1.0), max_depth + 1.0)
        expected = 1.0  # the bonus token
        for node in ranked[i]:
            if expected >= a_cap or len(selected[i]) >= n_max or budget <= 0:
                break
            selected[i].append(node)
            expected += trees[i].path_prob(node)
            budget -= 1
    return selected


def throughput_phase(
    trees: list[CandidateTree],
    ranked: list[list[int]],
    selected: list[list[int]],
    budget: int,
    keep_going: KeepGoing | None = None,
) -> list[list[int]]:
    """Spend what is left on the globally most probable nodes. `keep_going(f, num_selected,
    expected)` -- the next node's f, drafted nodes selected so far (both phases) and the expected
    tokens so far (n + sum f) -- may stop early, e.g. once a node no longer pays for its time."""
    selected = [list(s) for s in selected]
    num_selected = sum(len(s) for s in selected)
    expected = sum(expected_tokens(t, s) for t, s in zip(trees, selected))
    # Heap of each tree's next best node: (-f, depth, tree index, position in its ranking).
    heap = []
    for i, tree in enumerate(trees):
        pos = len(selected[i])
        if pos < len(ranked[i]):
            node = ranked[i][pos]
            heap.append((-tree.path_logprobs[node], tree.depths[node], i, pos))
    heapq.heapify(heap)
    taken = 0
    while heap and taken < budget:
        neg_logp, _, i, pos = heap[0]
        node = ranked[i][pos]
        f = trees[i].path_prob(node)
        if keep_going is not None and not keep_going(f, num_selected, expected):
            break
        heapq.heappop(heap)
        selected[i].append(node)
        taken, num_selected, expected = taken + 1, num_selected + 1, expected + f
        if pos + 1 < len(ranked[i]):
            nxt = ranked[i][pos + 1]
            heapq.heappush(heap, (-trees[i].path_logprobs[nxt], trees[i].depths[nxt], i, pos + 1))
    return selected


def select_nodes(
    trees: list[CandidateTree],
    requirements: list[float | None],
    budget: int,
    max_depth: int,
    n_max: int,
    keep_going: KeepGoing | None = None,
) -> list[list[int]]:
    """Both phases: SLO quotas first, then throughput. `budget` counts drafted nodes (roots are
    verified anyway and are not part of it)."""
    ranked = [t.ranked_nodes() for t in trees]
    quota = slo_phase(trees, ranked, requirements, budget, max_depth, n_max)
    left = budget - sum(len(q) for q in quota)
    return throughput_phase(trees, ranked, quota, left, keep_going)


def expected_tokens(tree: CandidateTree, nodes: list[int]) -> float:
    """1 (bonus) + sum of f over the selected nodes."""
    return 1.0 + sum(tree.path_prob(n) for n in nodes)
