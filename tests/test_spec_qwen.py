"""Slow: the realistic pair, Qwen2.5-Coder 1.5B target with its 0.5B draft. Greedy speculation
must be token-for-token plain greedy for every policy, on a ragged batch."""

import pytest

from adaserve import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "def is_prime(n: int) -> bool:\n",
    "<|im_start|>user\nWrite a Python function that reverses a linked list.<|im_end|>\n<|im_start|>assistant\n",
    "# Quick sort in Python\n",
    "<|im_start|>user\nWhat does `git rebase -i` do? Answer briefly.<|im_end|>\n<|im_start|>assistant\n",
]


def qwen_pair(policy: str) -> LLM:
    return LLM(
        "qwen2.5-coder-1.5b",
        draft="qwen2.5-coder-0.5b",
        spec_policy=policy,
        max_num_batched_tokens=256,
        kv_cache_memory=256 << 20,
        max_model_len=1024,
    )


def test_qwen_pair_greedy_speculation_equals_plain_greedy():
    llm = qwen_pair("static-tree")
    params = SamplingParams(max_tokens=48)
    results = {}
    for policy in ["none", "chain:4", "static-tree", "dynamic-tree"]:
        llm.engine.set_spec_policy(policy)
        results[policy] = [o.token_ids for o in llm.generate(PROMPTS, params)]
    for policy in ["chain:4", "static-tree", "dynamic-tree"]:
        assert results[policy] == results["none"], policy
    stats = llm.engine.spec.stats.totals
    assert stats.num_accepted > 0.5 * stats.num_verifications  # a real draft: most steps gain tokens
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.pool.num_blocks


def test_qwen_pair_tight_slo_gets_more_tokens_verified():
    """AdaServe's selection on the real pair with its profiled cost model: a tight and a loose
    request run together; the tight one gets more drafted tokens verified per iteration; output =
    plain greedy. (adaserve-cap: the planner would demote the unreachable 1 ms TPOT.)"""
    llm = qwen_pair("adaserve-cap")
    prompt = PROMPTS[1]
    engine = llm.engine
    tight = engine.add_request(prompt, SamplingParams(max_tokens=40, slo={"tpot_ms": 1.0}))
    loose = engine.add_request(prompt, SamplingParams(max_tokens=40, slo={"tpot_ms": 1e6}))
    while engine.has_unfinished:
        engine.step()
    engine.set_spec_policy("none")
    plain = llm.generate([prompt], SamplingParams(max_tokens=40))[0].token_ids
    assert tight.output_ids == plain and loose.output_ids == plain
    per_verify = [r.spec_stats.num_proposed / r.spec_stats.num_verifications for r in (tight, loose)]
    assert per_verify[0] > per_verify[1], per_verify
