"""Tree verification: greedy tables, and a statistical check that tree speculative sampling
keeps the target's distribution (and that the check catches noise reused across positions)."""

import pytest
import torch

from adaserve.engine.sampler import Sampler, sample_inverse_cdf
from adaserve.sampling import SamplingParams
from adaserve.spec import verify
from adaserve.spec.tree import CandidateTree, layout_tree
from adaserve.spec.verify import accept_greedy, accept_sampled
from tests.factories import chi_square_pvalue


def tree_from(parent_tokens: list[tuple[int, int]], root: int = 9):
    """[(parent_node, token), ...] in node order -> layout with every node selected."""
    t = CandidateTree.root_only("r", root)
    for i, (parent, token) in enumerate(parent_tokens):
        t.add(parent, token, -0.1 * (i + 1))  # earlier siblings are more likely
    return layout_tree(t, list(range(1, t.num_nodes)))


# root -> 1(tok 5), 2(tok 7); node 1 -> 3(tok 6), 4(tok 8); node 3 -> 5(tok 2)
TREE = [(0, 5), (0, 7), (1, 6), (1, 8), (3, 2)]


@pytest.mark.parametrize(
    "argmax, path, bonus",
    [
        ([5, 6, 0, 2, 0, 4], [1, 3, 5], 4),  # full path r-5-6-2, bonus after node 5
        ([7, 0, 3, 0, 0, 0], [2], 3),  # second root child, then a miss
        ([4, 0, 0, 0, 0, 0], [], 4),  # nothing accepted: the bonus is the target's own token
        ([5, 8, 0, 0, 1, 0], [1, 4], 1),
    ],
)
def test_greedy_acceptance(argmax, path, bonus):
    acc = accept_greedy(tree_from(TREE), argmax)
    assert acc.accepted_nodes == path and acc.bonus_token_id == bonus


VOCAB = 6


def target_dist(prefix: tuple[int, ...]) -> torch.Tensor:
    """A fixed random 'target model': next-token distribution after a token prefix."""
    g = torch.Generator().manual_seed(hash(prefix) % (2**31))
    weights = torch.rand(VOCAB, generator=g).pow(3) + 1e-3  # peaked, like a real model
    return weights / weights.sum()


def draft_children(prefix: tuple[int, ...]) -> list[int]:
    """A 'draft' that proposes 2 tokens that need not be the target's favourites."""
    g = torch.Generator().manual_seed((hash(prefix) * 7 + 1) % (2**31))
    return torch.randperm(VOCAB, generator=g)[:2].tolist()


def speculative_iteration(context: tuple[int, ...], uniforms: torch.Tensor) -> list[int]:
    """One verification of a depth-2, width-2 draft tree after `context`; returns emitted tokens."""
    t = CandidateTree.root_only("r", context[-1])
    paths = {0: context}
    for node in (0, 1, 2):  # the root's two children are nodes 1 and 2
        for tok in draft_children(paths[node]):
            paths[t.add(node, tok, -0.5)] = paths[node] + (tok,)
    layout = layout_tree(t, list(range(1, t.num_nodes)))
    probs = torch.stack([target_dist(paths[n]) for n in layout.source_nodes])  # [nodes, vocab]
    acc = accept_sampled(layout, probs, uniforms)
    return [layout.token_ids[i] for i in acc.accepted_nodes] + [acc.bonus_token_id]


def sample_two_tokens(sampler: Sampler, request_id: str) -> tuple[int, int]:
    context: tuple[int, ...] = (0,)
    emitted: list[int] = []
    params = SamplingParams(temperature=1.0)
    while len(emitted) < 2:
        new = speculative_iteration(context, sampler.uniforms(request_id, params, len(emitted), 3))
        emitted += new
        context += tuple(new)
    return emitted[0], emitted[1]


def sampled_vs_exact_pvalue(num_samples: int = 12000) -> float:
    sampler = Sampler(seed=1234)
    counts = torch.zeros(VOCAB, VOCAB)
    for i in range(num_samples):
        a, b = sample_two_tokens(sampler, f"r{i}")
        counts[a, b] += 1
    p1 = target_dist((0,))
    exact = torch.stack([p1[a] * target_dist((0, a)) for a in range(VOCAB)])  # [VOCAB, VOCAB]
    return chi_square_pvalue(counts.flatten().tolist(), exact.flatten().tolist())


def test_tree_speculative_sampling_keeps_the_target_distribution():
    assert sampled_vs_exact_pvalue() > 1e-3


def test_the_distribution_check_catches_noise_reused_across_positions(monkeypatch):
    def one_uniform_per_tree(probs, uniforms):  # every depth of a tree drawn at the root's number
        return sample_inverse_cdf(probs, uniforms[:1].expand(len(uniforms)))

    monkeypatch.setattr(verify, "sample_inverse_cdf", one_uniform_per_tree)
    assert sampled_vs_exact_pvalue() < 1e-6


@pytest.mark.parametrize(
    "probs, u, token",
    [
        ([0.5, 0.0, 0.3, 0.2], 0.0, 0),
        ([0.5, 0.0, 0.3, 0.2], 0.6, 2),  # cumulative 0.5 0.5 0.8 1.0: 0.5 <= 0.6 < 0.8
        ([0.5, 0.0, 0.3, 0.2], 0.5, 2),  # token 1 has no mass: never drawn
        ([0.5, 0.0, 0.3, 0.0], 1.0, 2),  # u * total rounded up to the total: the last token with mass
    ],
)
def test_inverse_cdf_draws_the_token_whose_interval_holds_u(probs, u, token):
    assert sample_inverse_cdf(torch.tensor([probs]), torch.tensor([u])) == [token]


def test_a_request_stream_does_not_depend_on_how_far_each_step_reads():
    params = SamplingParams(temperature=1.0, seed=7)
    a, b = Sampler(), Sampler()
    whole = a.uniforms("r", params, 0, 150)
    pieces = torch.cat([b.uniforms("r", params, start, 3) for start in range(0, 150, 3)])
    assert torch.equal(whole, pieces) and len(set(whole.tolist())) == 150


def test_a_node_is_off_the_targets_path_below_a_child_the_target_did_not_pick():
    """Path 0 -> 2, the target picks token 7 after node 2. Node 1 (a sibling of 2) and its children
    are off, so are 2's other children; node 6 (token 7 under 2) and its child 8 are on the target's
    path, unverified."""
    from adaserve.sim.recorder import off_path
    from adaserve.spec.tree import CandidateTree

    tree = CandidateTree.root_only("r", 0)
    for parent, token in [(0, 10), (0, 11), (2, 3), (1, 4), (1, 5), (2, 7), (2, 9), (6, 1)]:
        tree.add(parent, token, -0.1)
    picks = {0: 11, 2: 7}  # node 2 has token 11
    assert [n for n in range(1, 9) if n not in picks and off_path(tree, n, picks)] == [1, 3, 4, 5, 7]
