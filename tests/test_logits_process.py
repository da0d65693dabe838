"""Penalties, logit_bias, logprobs and seeds: table tests of the processing, transformers as the
oracle of log-probabilities, and speculation kept lossless with each (greedy equality, and the
sampled distribution under penalties by a chi-square test)."""

import math

import pytest
import torch

from adaserve import LLM, SamplingParams
from adaserve.engine.logits_process import process_logits, token_logprobs, tree_paths
from tests.factories import chi_square_pvalue
from tests.test_spec_engine import PROMPTS


def test_tree_paths_follow_the_parents():
    assert tree_paths([10, 11, 12, 13], [-1, 0, 1, 0]) == [[], [11], [11, 12], [13]]


def test_each_tree_row_is_penalized_by_the_output_and_its_own_path():
    """The module docstring's example: output [5, 7], root -> a (7) -> b (9)."""
    logits = torch.zeros(3, 12)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=1.0, logit_bias={3: 2.0})
    out = process_logits(logits, params, [5, 7], tree_paths([7, 7, 9], [-1, 0, 1]))
    expect = torch.zeros(3, 12)
    expect[:, 3] = 2.0
    expect[:, 5] = -1.5  # seen once: presence 0.5 + frequency 1 x 1
    expect[0, 7], expect[1, 7], expect[2, 7] = -1.5, -2.5, -2.5
    expect[2, 9] = -1.5
    assert torch.equal(out, expect)
    assert process_logits(logits, SamplingParams(), [5], [[]]) is logits  # nothing asked: untouched


def test_token_logprobs_are_the_raw_log_softmax_with_the_top_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    [a, b] = token_logprobs(logits, [0, 1], [1, 0], num_top=2)
    lsm = logits.log_softmax(-1)
    assert a.token_id == 1 and a.logprob == pytest.approx(lsm[0, 1].item())
    assert [t for t, _ in a.top] == [2, 1] and b.top[0] == (0, pytest.approx(lsm[1, 0].item()))


@pytest.mark.parametrize(
    "params",
    [
        dict(frequency_penalty=1.5),
        dict(presence_penalty=2.0, frequency_penalty=0.5),
        dict(frequency_penalty=-1.0),
        dict(logit_bias={198: -100.0, 13: 5.0}),
    ],
    ids=["frequency", "presence", "negative", "bias"],
)
@pytest.mark.parametrize("policy", ["chain:4", "dynamic-tree:12:5:3"])
def test_greedy_speculation_with_penalties_and_bias_equals_plain(smollm2_dir, params, policy):
    sp = SamplingParams(max_tokens=32, **params)
    plain = [o.token_ids for o in LLM(str(smollm2_dir)).generate(PROMPTS, sp)]
    llm = LLM(str(smollm2_dir), draft=str(smollm2_dir), spec_policy=policy)
    assert [o.token_ids for o in llm.generate(PROMPTS, sp)] == plain
    assert llm.engine.spec.stats.totals.num_accepted > 0
    unprocessed = [o.token_ids for o in LLM(str(smollm2_dir)).generate(PROMPTS, SamplingParams(max_tokens=32))]
    assert plain != unprocessed  # the processing changed something
    for banned, bias in params.get("logit_bias", {}).items():
        assert bias > 0 or all(banned not in out for out in plain)


def test_logprobs_are_the_targets_with_and_without_speculation(smollm2_dir):
    from transformers import AutoModelForCausalLM

    sp = SamplingParams(max_tokens=16, logprobs=3)
    fp32 = dict(weights="fp32")  # transformers, the oracle, runs the dequantized weights in fp32
    plain = LLM(str(smollm2_dir), **fp32).generate(PROMPTS[:3], sp)
    spec_llm = LLM(str(smollm2_dir), draft=str(smollm2_dir), spec_policy="dynamic-tree:12:5:3", **fp32)
    spec = spec_llm.generate(PROMPTS[:3], sp)
    assert spec_llm.engine.spec.stats.totals.num_accepted > 0
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    for p, s in zip(plain, spec):
        assert p.token_ids == s.token_ids and len(s.logprobs) == len(s.token_ids)
        with torch.inference_mode():
            ids = torch.tensor([p.prompt_token_ids + p.token_ids])
            oracle = hf(ids).logits[0, len(p.prompt_token_ids) - 1 : -1].log_softmax(-1)  # [num_out, vocab]
        for k, (lp_plain, lp_spec) in enumerate(zip(p.logprobs, s.logprobs)):
            want = oracle[k, p.token_ids[k]].item()
            assert lp_plain.logprob == pytest.approx(want, abs=2e-3)
            assert lp_spec.logprob == pytest.approx(want, abs=2e-3)
            assert len(lp_spec.top) == 3 and lp_spec.top[0][0] == p.token_ids[k]  # greedy: the top one


def test_the_same_seed_gives_the_same_sample_alone_and_in_a_busy_batch(smollm2_dir):
    llm = LLM(str(smollm2_dir))
    sp = SamplingParams(max_tokens=24, temperature=1.0, seed=1234)
    alone = llm.generate([PROMPTS[0]], sp)[0].token_ids
    others = [SamplingParams(max_tokens=40, temperature=0.8, seed=s) for s in range(8)]
    busy = llm.generate([PROMPTS[0]] + PROMPTS[1:] * 2, [sp] + others[: len(PROMPTS[1:]) * 2])[0].token_ids
    assert busy == alone
    assert llm.generate([PROMPTS[0]], SamplingParams(max_tokens=24, temperature=1.0, seed=99))[0].token_ids != alone


@pytest.mark.parametrize("policy", ["chain:4", "dynamic-tree:12:5:3"])
def test_a_seed_gives_the_same_sample_with_speculation_as_without(smollm2_dir, policy):
    """One uniform number per output position (adaserve.engine.sampler): whichever step and tree
    node computes a position draws the same token, so a seeded sample is the same with and without
    speculation, and again on a warm prefix cache (which changes every step's shape)."""
    params = [SamplingParams(max_tokens=24, temperature=1.0, seed=s) for s in range(len(PROMPTS))]
    plain = [o.token_ids for o in LLM(str(smollm2_dir)).generate(PROMPTS, params)]
    llm = LLM(str(smollm2_dir), draft="smollm2-135m", spec_policy=policy)  # the target as its draft
    for _ in range(2):  # cold, then warm prefix cache
        assert [o.token_ids for o in llm.generate(PROMPTS, params)] == plain
    stats = llm.engine.spec.stats.totals
    assert stats.num_accepted > 0.3 * stats.num_verifications  # speculation really ran
    assert stats.acceptance_rate < 0.95  # and sampled tokens left the drafted paths


def exact_penalized_distribution(model_dir, prompt_ids, top_k, presence, frequency):
    """P(t1, t2, t3) with temperature 1, penalties over the generated tokens, then top_k."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def next_probs(generated):
        with torch.inference_mode():
            logits = hf(torch.tensor([prompt_ids + generated])).logits[0, -1].clone()
            for t in set(generated):
                logits[t] -= presence + frequency * generated.count(t)
        top = logits.topk(top_k)
        return dict(zip(top.indices.tolist(), top.values.softmax(-1).tolist()))

    dist = {}
    for a, pa in next_probs([]).items():
        for b, pb in next_probs([a]).items():
            for c, pc in next_probs([a, b]).items():
                dist[(a, b, c)] = pa * pb * pc
    return dist


def test_sampled_speculation_with_penalties_keeps_the_target_distribution(tiny_model_dirs):
    """As test_spec_engine's chi-square test, with strong penalties: a tree path that repeats a
    token must be judged by the penalized distribution of that path, or the joint is off."""
    target = tiny_model_dirs["llama"]
    prompt_ids, top_k, n = [500, 600, 700], 3, 3000
    presence, frequency = -0.5, -1.5  # negative: repeating a token is likely (random models rarely do)
    exact = exact_penalized_distribution(target, prompt_ids, top_k, presence, frequency)
    llm = LLM(
        str(target), draft=str(target), spec_policy="static-tree:2,2", max_num_seqs=128, max_num_batched_tokens=2048
    )
    params = [
        SamplingParams(
            max_tokens=3,
            temperature=1.0,
            top_k=top_k,
            seed=s,
            ignore_eos=True,
            presence_penalty=presence,
            frequency_penalty=frequency,
        )
        for s in range(n)
    ]
    counts = {}
    for o in llm.generate([prompt_ids] * n, params):
        counts[tuple(o.token_ids)] = counts.get(tuple(o.token_ids), 0) + 1
    assert set(counts) <= set(exact) and llm.engine.spec.stats.totals.num_accepted > 0.05 * n
    repeats = sum(p for cell, p in exact.items() if len(set(cell)) < 3)
    assert 0.01 < repeats  # paths that repeat a token (the penalties matter) have weight
    cells = list(exact)
    assert chi_square_pvalue([counts.get(c, 0) for c in cells], [exact[c] for c in cells]) > 1e-3
    assert not math.isnan(sum(exact.values()))
