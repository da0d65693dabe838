"""Greedy generation of our engine equals transformers' generate, token for token."""

import pytest
import torch

from adaserve import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three uses of a paperclip:\n1.",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def hf_greedy(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    outs = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            gen = hf.generate(ids, max_new_tokens=64, do_sample=False, attention_mask=torch.ones_like(ids))
        outs.append(gen[0, ids.shape[1] :].tolist())
    return outs


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        dict(),  # all prompts batched in one step
        dict(max_num_batched_tokens=7, block_size=4),  # chunked prefill, decode and prefill mixed
        dict(max_num_seqs=2),  # continuous batching: requests join as others finish
    ],
    ids=["batched", "chunked-prefill", "max-2-seqs"],
)
def test_greedy_matches_transformers(smollm2_dir, hf_greedy, engine_kwargs):
    llm = LLM(str(smollm2_dir), weights="fp32", **engine_kwargs)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=64))
    for expected, out in zip(hf_greedy, outs):
        assert out.token_ids == expected
        assert len(out.token_times) == len(out.token_ids)


def test_preemption_recomputes_and_keeps_greedy_output(smollm2_dir, hf_greedy):
    # 24 blocks x 4 tokens: five requests of ~80 tokens cannot all stay resident.
    from adaserve.models.loader import read_model_config

    per_token = read_model_config(smollm2_dir).kv_bytes_per_token()
    llm = LLM(str(smollm2_dir), weights="fp32", block_size=4, kv_cache_memory=24 * 4 * per_token)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=64))
    assert [o.token_ids for o in outs] == hf_greedy
    assert sum(o.num_preemptions for o in outs) > 0
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.pool.num_blocks
