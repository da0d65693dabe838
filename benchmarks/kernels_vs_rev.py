"""Our CPU kernels against those of an earlier git revision, on a whole GGUF model, side by side.

Builds the kernels of REV (adaserve/kernels/*.cpp at that commit) beside the current ones, then times
forward passes of the target (N new tokens over a 128-token cached context, the profiler's pass),
alternating old and new on the same loaded weights, and writes medians with the CPU flags.

Usage: python benchmarks/kernels_vs_rev.py --rev 4ae0ed1~2 [--model qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

import adaserve.kernels as kernels
from adaserve.config import EngineConfig
from adaserve.engine.builder import build_target
from adaserve.engine.profiler import _reserve_context, _timed_forward
from adaserve.models.llama import MLP, Attention, RMSNorm
from adaserve.models.quantized import QuantLinear

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 128


def build_rev(rev: str, build_dir: Path):
    """The kernels module of `rev`, compiled as the current build is."""
    sources = []
    for src in kernels.SOURCES:
        show = subprocess.run(["git", "show", f"{rev}:adaserve/kernels/{src.name}"], cwd=ROOT, capture_output=True)
        if show.returncode:  # a source added after rev (e.g. ops.cpp)
            continue
        path = build_dir / src.name
        path.write_bytes(show.stdout)
        sources.append(str(path))
    flags, build = kernels.BUILD_FLAGS, str(build_dir)
    return load("adaserve_qgemm_rev", sources, extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=build)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True)
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--tokens", default="1,4,16,64,256")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernels_vs_rev.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    new = kernels.qgemm()
    old = build_rev(args.rev, Path(tempfile.mkdtemp(prefix="kernels-rev-")))
    executor = build_target(EngineConfig(model=args.model)).executor
    linears = [m for m in executor.model.modules() if isinstance(m, QuantLinear)]
    fusable = [m for m in executor.model.modules() if isinstance(m, (RMSNorm, Attention, MLP))]

    def use(ops) -> None:  # the linears hold their module; attention looks kernels.qgemm up per call
        for m in linears:
            m._ops = ops
        for m in fusable:  # a rev before the fused ops ran torch's
            m.ops = ops if hasattr(ops, "rms_norm") else None
        kernels.qgemm = lambda: ops

    _reserve_context(executor, CONTEXT)
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        times = {"old": [], "new": []}
        for rep in range(6 if n < 64 else 3):  # the first of each is a warm-up
            for name, ops in (("old", old), ("new", new)):
                use(ops)
                ms = _timed_forward(executor, CONTEXT, n)
                if rep:
                    times[name].append(ms)
        old_ms, new_ms = statistics.median(times["old"]), statistics.median(times["new"])
        rows.append({"num_tokens": n, "old_ms": round(old_ms, 1), "new_ms": round(new_ms, 1)})
        print(f"{n:>4} tokens: {args.rev} {old_ms:.0f} ms, now {new_ms:.0f} ms, {old_ms / new_ms:.2f}x", flush=True)
    result = {"rev": args.rev, "model": args.model, "context": CONTEXT, "cpu_flags": kernels.cpu_flags(), "rows": rows}
    result["cpu"], result["isa"] = kernels.cpu_model(), new.isa()
    rev_commit = subprocess.check_output(["git", "rev-parse", "--short", args.rev], cwd=ROOT, text=True)
    result["rev_commit"] = rev_commit.strip()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
