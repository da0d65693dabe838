"""Tree topology, policies' expand/select and n-gram lookup: pure Python tables."""

import math

import pytest

from adaserve.spec.policies import (
    ChainPolicy,
    DynamicTreePolicy,
    LayerCandidates,
    SelectionContext,
    StaticTreePolicy,
    best_nodes,
    grow_layer,
    make_policy,
    split_budget,
)
from adaserve.spec.proposers import NgramProposer
from adaserve.spec.tree import CandidateTree, Offer, layout_tree


def example_tree() -> CandidateTree:
    """The worked example of tree.py plus one deeper node: r -> a, b; a -> c, d; c -> e."""
    t = CandidateTree.root_only("r", 100)
    a = t.add(0, 101, -0.1)
    b = t.add(0, 102, -2.0)
    c = t.add(a, 103, -0.2)
    t.add(a, 104, -1.5)
    t.add(c, 105, -0.3)
    assert b == 2
    return t


def test_layout_of_the_worked_example():
    lay = layout_tree(example_tree(), [1, 2, 3, 4])
    assert lay.token_ids == [100, 101, 102, 103, 104]
    assert lay.parents == [-1, 0, 0, 1, 1]
    assert lay.depths == [0, 1, 1, 2, 2]
    assert lay.mask_rows() == [[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4]]
    assert lay.children == [[1, 2], [3, 4], [], [], []]  # most likely child first


def test_layout_reindexes_a_sparse_selection():
    lay = layout_tree(example_tree(), [5, 1, 3])
    assert lay.token_ids == [100, 101, 103, 105] and lay.parents == [-1, 0, 1, 2]
    assert lay.source_nodes == [0, 1, 3, 5]


def test_layout_rejects_a_disconnected_selection():
    with pytest.raises(ValueError, match="not connected"):
        layout_tree(example_tree(), [3])


def test_best_nodes_take_highest_path_probability_and_stay_connected():
    t = example_tree()  # path logprobs: a -0.1, b -2.0, c -0.3, d -1.6, e -0.6
    assert best_nodes(t, 3) == [1, 3, 5]
    # Equal path probabilities (a draft prob of exactly 1): the parent still comes first.
    t2 = CandidateTree.root_only("r", 1)
    t2.add(t2.add(0, 2, 0.0), 3, 0.0)
    assert best_nodes(t2, 1) == [1]


@pytest.mark.parametrize(
    "budget, want, quota",
    [
        (10, [3, 3, 3], [3, 3, 3]),
        (6, [5, 5, 5], [2, 2, 2]),
        (7, [1, 8, 8], [1, 3, 3]),
        (0, [4, 4], [0, 0]),
        (5, [0, 9], [0, 5]),
    ],
)
def test_split_budget(budget, want, quota):
    trees = [CandidateTree.root_only(str(i), 0) for i in range(len(want))]
    assert split_budget(trees, budget, want) == quota


def children(*specs):
    """(parent, token, path log-prob) per candidate."""
    return LayerCandidates(*(list(column) for column in zip(*specs)))


def test_static_tree_keeps_per_parent_widths():
    policy = StaticTreePolicy((1, 2))
    layer2 = children((1, 10, -0.2), (1, 11, -0.6), (1, 12, -1.0), (2, 13, -3.0), (2, 14, -3.1))
    kept = policy.expand(2, layer2)
    assert [layer2.token_ids[i] for i in kept] == [10, 11, 13, 14]
    assert StaticTreePolicy().max_tokens_per_seq == 1 + 1 + 3 * 6


def test_dynamic_tree_keeps_global_top_width_per_layer():
    policy = DynamicTreePolicy(num_nodes=4, depth=3, width=2)
    layer = children((1, 10, -0.2), (1, 11, -0.6), (2, 13, -0.15))
    assert [layer.token_ids[i] for i in policy.expand(2, layer)] == [13, 10]


def test_chain_select_respects_the_budget():
    t = CandidateTree.root_only("r", 0)
    p = 0
    for tok in range(4):
        p = t.add(p, tok, -0.1)
    assert ChainPolicy(4).select([t, t], SelectionContext(budget=5)) == [[1, 2, 3], [1, 2]]


@pytest.mark.parametrize(
    "spec, name, depth, top_k, max_tokens",
    [
        ("chain:6", "chain:6", 6, 1, 6),
        ("static-tree", "static-tree", 8, 3, 20),  # SpecInfer's 1,1,3,1,1,1,1,1: 1 + 1 + 3 x 6 nodes
        ("static-tree:1,2", "static-tree", 2, 2, 3),
        ("dynamic-tree:8:4:2", "dynamic-tree", 4, 2, 8),
        ("dynamic-tree", "dynamic-tree", 6, 4, 16),
    ],
)
def test_make_policy_parses_the_shape(spec, name, depth, top_k, max_tokens):
    policy = make_policy(spec)
    assert (policy.name, policy.depth, policy.top_k, policy.max_tokens_per_seq) == (name, depth, top_k, max_tokens)


@pytest.mark.parametrize("spec", ["chain:0", "chain:x", "bogus", "static-tree:0"])
def test_make_policy_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        make_policy(spec)


@pytest.mark.parametrize(
    "ids, length, expected",
    [
        ([5, 6, 7, 9, 5, 6], 3, [7, 9, 5]),
        ([5, 6, 7, 9, 5, 6], 10, [7, 9, 5, 6]),
        ([1, 2, 3, 4], 3, []),  # no earlier occurrence of any suffix
        ([1, 2, 1, 3, 1], 2, [3, 1]),  # the latest occurrence of [1] wins
        ([4, 8, 9, 4, 8, 1, 4, 8], 2, [1, 4]),  # longest match first: [4 8] latest at 3
    ],
)
def test_ngram_continuation(ids, length, expected):
    assert NgramProposer(1, 3).continuation(ids, length) == expected


def test_grow_layer_adds_kept_children_grouped_by_parent_most_likely_first():
    tree = CandidateTree.root_only("r", 0)
    first = tree.add_children([0, 0], [1, 2], [-0.1, -2.0])  # (path log-probs, the root's is 0)
    assert first == [1, 2] and tree.depths == [0, 1, 1] and tree.path_logprobs == [0.0, -0.1, -2.0]
    offers = [Offer([10, 11, 12], [-0.2, -0.3, -math.inf]), Offer([13, 14], [-0.01, -0.02])]
    new = grow_layer(tree, first, offers, DynamicTreePolicy(num_nodes=8, depth=2, width=3), layer=2)
    # Paths: 10: -0.3, 11: -0.4, 13: -2.01, 14: -2.02; the top three, then by parent, most likely first.
    assert [tree.token_ids[n] for n in new] == [10, 11, 13]
    assert [tree.parents[n] for n in new] == [1, 1, 2] and [tree.depths[n] for n in new] == [2, 2, 2]
    assert tree.path_logprobs[new[0]] == pytest.approx(-0.3) and tree.offers[1] is offers[0]
    ruled_out = grow_layer(
        tree, [new[0]], [Offer([20, 21, 22], [-0.5, -math.inf, math.nan])], DynamicTreePolicy(8, 3, 3), layer=3
    )
    assert [tree.token_ids[n] for n in ruled_out] == [20]  # a token the draft rules out is never offered
    with pytest.raises(ValueError, match="one log-prob per token"):
        Offer([1, 2], [-0.1])
