"""Paper-scale study in the simulator: Llama-3.1-70B with a 1B-class draft on 4 x A100, the paper's
three SLO categories (coding 1.2x the unloaded per-token latency, chat 50 ms, summarization 150 ms),
mix 60/20/20, 256 output tokens, a request-rate sweep over every policy; plus the time to simulate
10,000 requests.

Cost model: the latency table published with the AdaServe artifact (roofline below its first point,
roofline for the draft), and the pure roofline as a second opinion (--cost). Acceptance: the offer
records of our Qwen2.5-Coder 1.5B/0.5B pair (`adaserve simulate record`), since no 70B/1B pair runs
here; --acceptance parametric:... to vary it.

    python benchmarks/sim_paper_scale.py [--rates 2,4,6,8,10] [--num-requests 1000]
writes benchmarks/results/sim_paper/{sim_sweep_rate.json,.png, paper_scale.json}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from adaserve.bench.tables import headline, sweep_table
from adaserve.bench.workload import WorkloadSpec
from adaserve.sim.acceptance import DEFAULT_RECORDS, parse_acceptance
from adaserve.sim.config import SimConfig
from adaserve.sim.roofline import parse_cost_model
from adaserve.sim.run import generated_workload, simulate, sweep, unloaded_tpot_ms

PAPER = {"attainment_ratio": 2.1, "goodput_ratio": 1.9}  # AdaServe over the best baseline (paper)
POLICIES = "none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve"
# 4 x 80 GB minus 141 GB of bf16 weights and ~20 GB of activations, at 320 KiB of KV per token.
A100X4_70B = SimConfig(max_num_seqs=256, max_num_batched_tokens=2048, kv_capacity_tokens=480_000)


def time_10k(cost, acceptance, config: SimConfig, spec: WorkloadSpec, unloaded: float, policies: list[str]) -> dict:
    workload = generated_workload(replace(spec, num_requests=10_000), unloaded)
    timings = {}
    for policy in policies:
        start = time.process_time()
        result = simulate(replace(config, policy=policy), cost, acceptance, workload)
        timings[policy] = {
            "cpu_seconds": time.process_time() - start,
            "num_steps": result["num_steps"],
            "attainment": result["categories"]["all"]["attainment"],
        }
        print(f"10k requests, {policy}: {timings[policy]['cpu_seconds']:.1f} s CPU", flush=True)
    return {"rate": spec.rate, "timings": timings}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cost", default="table:adaserve-a100-70b")
    p.add_argument("--acceptance", default=f"recorded:{DEFAULT_RECORDS}")
    p.add_argument("--rates", default="2,4,6,8,10")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--policies", default=POLICIES)
    p.add_argument("--timing-policies", default="none,adaserve", help="policies timed on 10,000 requests ('' to skip)")
    p.add_argument("--out-dir", default="benchmarks/results/sim_paper")
    args = p.parse_args(argv)
    cost, acceptance = parse_cost_model(args.cost), parse_acceptance(args.acceptance)
    unloaded = unloaded_tpot_ms(cost, A100X4_70B)
    spec = WorkloadSpec(
        num_requests=args.num_requests,
        output_tokens=256,
        slo_multiples={"coding": 1.2, "chat": 50.0 / unloaded, "summarization": 150.0 / unloaded},
    )
    print(
        f"unloaded per-token latency: {unloaded:.1f} ms; SLOs coding {1.2 * unloaded:.1f} ms, chat 50 ms, "
        "summarization 150 ms",
        flush=True,
    )
    out_dir = Path(args.out_dir)
    summary = sweep(
        args.policies.split(","),
        [float(r) for r in args.rates.split(",")],
        lambda rate: generated_workload(replace(spec, rate=rate), unloaded),
        A100X4_70B,
        cost,
        acceptance,
        "rate",
        out_dir,
    )
    report = {
        "cost_model": cost.meta,
        "acceptance": args.acceptance,
        "unloaded_tpot_ms": unloaded,
        "config": asdict(A100X4_70B),
        "num_requests_per_point": args.num_requests,
        "paper": PAPER,
        "ratios": headline(summary),
    }
    if args.timing_policies:
        report["simulate_10k"] = time_10k(
            cost,
            acceptance,
            A100X4_70B,
            replace(spec, rate=max(float(r) for r in args.rates.split(","))),
            unloaded,
            args.timing_policies.split(","),
        )
    (out_dir / "paper_scale.json").write_text(json.dumps(report, indent=1))
    print(sweep_table(summary))
    for r in report["ratios"]:
        print(
            f"rate {r['value']}: attainment x{r['attainment_ratio']:.2f} vs {r['best_other_by_attainment']}, "
            f"goodput x{r['goodput_ratio']:.2f} vs {r['best_other_by_goodput']}"
        )
    return report


if __name__ == "__main__":
    sys.exit(main() and 0)
