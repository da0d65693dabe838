"""Resident memory of the engine, per component, for the weight formats side by side.

    python benchmarks/memory.py [--formats gguf,fp32] [--model qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b]

Each format runs in its own process (memory is not returned to the OS reliably within one). The
process builds the engine as `adaserve serve` does (target, draft, KV caches, cost model), serves a
16-request burst, and reports resident memory (RSS) at each stage beside what the tensors account
for: weights and KV caches of target and draft. "other" is RSS minus the tensors: the Python and
torch runtime, tokenizers, allocator slack. Writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

GiB = 1 << 30


def rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / GiB


def tensor_gb(module) -> float:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.untyped_storage().nbytes() for t in {id(t): t for t in tensors}.values()) / GiB


def measure(model: str, draft: str | None, weights: str, policy: str) -> dict:
    """Runs in a child process: one engine, its stages and components."""
    import torch

    from adaserve import LLM, SamplingParams
    from adaserve.kernels import cpu_flags

    torch.set_num_threads(2)
    stages = {"imports": rss_gb()}
    llm = LLM(model, draft=draft, spec_policy=policy, weights=weights, num_threads=2)
    stages["engine_built"] = rss_gb()
    runner = llm.engine.runner
    prompts = [f"Write a Python function number {i} that sorts a list." for i in range(16)]
    llm.generate(prompts, SamplingParams(max_tokens=64, ignore_eos=True))
    stages["after_burst"] = rss_gb()
    parts = {
        "target_weights": tensor_gb(runner.executor.model),
        "target_kv": 2 * runner.executor.kv_cache.k.nbytes / GiB,
    }
    if runner.draft is not None:
        parts["draft_weights"] = tensor_gb(runner.draft.model)
        parts["draft_kv"] = 2 * runner.draft.kv_cache.k.nbytes / GiB
    parts["other"] = stages["after_burst"] - sum(parts.values())
    return {
        "weights": runner.weights,
        "stages_rss_gb": stages,
        "components_gb": parts,
        "cpu_flags": cpu_flags(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default="gguf,fp32")
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b")
    p.add_argument("--policy", default="adaserve")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.draft or None, args.child, args.policy)))
        return
    rows = []
    for fmt in args.formats.split(","):
        cmd = [sys.executable, __file__, "--child", fmt, "--model", args.model, "--draft", args.draft]
        cmd += ["--policy", args.policy]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{fmt}: the measuring process failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row))
    result = {"model": args.model, "draft": args.draft, "policy": args.policy, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
