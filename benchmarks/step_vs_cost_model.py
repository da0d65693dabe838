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
    while engine.has_unfinished and len(rows) < args.steps:
        scheduled = engine.scheduler.schedule()  # peek at the step's shape, then run it as the engine does
        shape = (scheduled.num_batched_tokens, len(scheduled.chunks), sum(c.start for c in scheduled.chunks))
        start = time.perf_counter()
        forward = engine.runner.run(scheduled)
        now = engine.clock()
        for chunk, logits in zip(scheduled.chunks, forward.logits):
            chunk.request.num_computed_tokens += chunk.num_new_tokens
            if logits is not None:
                engine._append_tokens(chunk.request, [engine.sampler.sample(logits[0], chunk.request.request_id,
                                                                             chunk.request.params)], now)
        measured = (time.perf_counter() - start) * 1000.0
        predicted = cost.verify_ms(shape[0], shape[2], shape[1])
        rows.append({"num_tokens": shape[0], "num_seqs": shape[1], "num_context_tokens": shape[2],
                     "measured_ms": measured, "predicted_ms": predicted})
        print(rows[-1], flush=True)
    json.dump({"bench": args.bench, "profile": args.profile, "steps": rows}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
