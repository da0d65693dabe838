"""The fused small ops (RMSNorm + residual add, rotary, SiLU gating; adaserve/kernels/ops.cpp)
against the torch ops they replace, on a whole GGUF model, side by side.

Times forward passes of the target (N new tokens over a 128-token cached context, the profiler's
pass), alternating fused and torch on the same loaded weights (repetitions interleaved, so machine
noise hits both alike), and writes medians with the CPU flags.

Usage: python benchmarks/fused_ops.py [--model qwen2.5-coder-1.5b] [--tokens 1,4,16,64]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import adaserve.kernels as kernels
from adaserve.config import EngineConfig
from adaserve.engine.builder import build_target
from adaserve.engine.profiler import _reserve_context, _timed_forward
from adaserve.models.llama import MLP, Attention, RMSNorm

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 128


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--tokens", default="1,4,16,64")
    p.add_argument("--reps", type=int, default=40, help="passes per mode and token count (1-token passes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fused_ops.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    executor = build_target(EngineConfig(model=args.model)).executor
    fusable = [m for m in executor.model.modules() if isinstance(m, (RMSNorm, Attention, MLP))]

    def use(fused: bool) -> None:
        for m in fusable:
            m.ops = kernels.qgemm() if fused else None

    _reserve_context(executor, CONTEXT)
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        times = {"torch": [], "fused": []}
        for rep in range(1 + max(3, args.reps // n)):  # the first of each is a warm-up
            for name in times:
                use(name == "fused")
                ms = _timed_forward(executor, CONTEXT, n)
                if rep:
                    times[name].append(ms)
        torch_ms, fused_ms = statistics.median(times["torch"]), statistics.median(times["fused"])
        rows.append({"num_tokens": n, "torch_ms": round(torch_ms, 2), "fused_ms": round(fused_ms, 2)})
        print(f"{n:>4} tokens: torch ops {torch_ms:.1f} ms, fused {fused_ms:.1f} ms, {torch_ms / fused_ms:.3f}x")
    result = {"model": args.model, "context": CONTEXT, "cpu": kernels.cpu_model(), "cpu_flags": kernels.cpu_flags()}
    result["rows"] = rows
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
