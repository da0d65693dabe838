"""Where the simulator's cost model misses the real engine: run the engine (plain decoding) on the
prompt lengths of a measured bench point, all requests at once, and compare every step's measured
time with the profiled cost model's prediction for the same tokens, context and sequences.

    python benchmarks/step_vs_cost_model.py [--bench benchmarks/results/sweep_rate/none_rate_0.64.json]
        [--profile benchmarks/results/sim_validation/profile_qwen.json] [--steps 60]
writes benchmarks/results/step_vs_cost_model.json
"""

import argparse
import json
import random
import time

from adaserve.config import EngineConfig
from adaserve.engine.core import EngineCore
from adaserve.sampling import SamplingParams
from adaserve.sched.cost_model import CostModel


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bench", default="benchmarks/results/sweep_rate/none_rate_0.64.json")
    p.add_argument("--profile", default="benchmarks/results/sim_validation/profile_qwen.json")
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", default="benchmarks/results/step_vs_cost_model.json")
    args = p.parse_args()
    lengths = [r["server_usage"]["prompt_tokens"] for r in json.load(open(args.bench))["records"]]
    cost = CostModel.load(args.profile)
    engine = EngineCore(EngineConfig(model=args.model, spec_policy="none", num_threads=2))
    rng = random.Random(0)
    for n in lengths:
        engine.add_request([rng.randrange(1000, 30000) for _ in range(n)], SamplingParams(max_tokens=48, ignore_eos=True))
    rows = []
    forward = engine.runner.run

    def timed_forward(step):  # the engine's own step, with its forward pass timed against the profile
        start = time.perf_counter()
        out = forward(step)
        measured = (time.perf_counter() - start) * 1000.0
        context, pairs = step.num_context_tokens, step.num_context_pairs
        predicted = cost.verify_ms(step.num_batched_tokens, context, len(step.chunks), pairs)
        rows.append({"num_tokens": step.num_batched_tokens, "num_seqs": len(step.chunks), "num_context_tokens": context,
                     "num_context_pairs": pairs, "measured_ms": measured, "predicted_ms": predicted})
        print(rows[-1], flush=True)
        return out

    engine.runner.run = timed_forward
    while engine.has_unfinished and len(rows) < args.steps:
        engine.step()
    json.dump({"bench": args.bench, "profile": args.profile, "steps": rows}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
