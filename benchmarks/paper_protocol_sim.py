"""The paper's headline under its own protocol, in the simulator at paper scale, split into causes.

Setup as benchmarks/slo_serving_sim.py (Llama-3.1-70B on 4 x A100 from the artifact's latency
table, 256 output tokens, the paper's SLO mix, 1000 requests per point). Conditions, each against
every published baseline:

  paper        the protocol (adaserve.bench.protocol): adaserve-paper at 64 sequences, baselines at
               512, judged by TPOT alone, recorded Qwen acceptance
  equal_seqs   the same, every policy at 64 sequences (the admission limit taken out)
  joint        the paper's runs judged by TTFT and TPOT (the TTFT exclusion taken out)
  top1_0.6     the paper's protocol with a weaker draft (parametric top1 0.6)

adaserve (the full system: planner, overload control, 64 sequences like adaserve-paper) runs beside it.

    python benchmarks/paper_protocol_sim.py [--rates 4,8,12,16] [--num-requests 1000]
writes benchmarks/results/paper_protocol/paper_protocol.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from slo_serving_sim import ACCEPTANCE, make_setup  # (beside this script)

from adaserve.bench.datasets import category_prompts
from adaserve.bench.protocol import PAPER_ADASERVE_SEQS, paper_seqs
from adaserve.bench.workload import WorkloadSpec, build_workload
from adaserve.kernels import cpu_model
from adaserve.sim.acceptance import parse_acceptance
from adaserve.sim.roofline import parse_cost_model
from adaserve.sim.run import simulate, unloaded_tpot_ms
from adaserve.sim.workloads import from_bench_requests

BASELINES = ("none", "chunked", "chain:4", "static-tree", "dynamic-tree", "smartspec")
ADASERVES = ("adaserve-paper", "adaserve")
OUT = Path("benchmarks/results/paper_protocol")
# condition -> (acceptance, sequences per policy, judged jointly)
CONDITIONS = {
    "paper": ("recorded", paper_seqs, False),
    "equal_seqs": ("recorded", lambda policy: PAPER_ADASERVE_SEQS, False),
    "joint": ("recorded", paper_seqs, True),
    "top1_0.6": ("top1_0.6", paper_seqs, False),
}


def run_point(setup, acceptance: str, seqs, rate: float, num_requests: int) -> dict[str, dict]:
    """Every policy on one workload: {policy: the "all" category of its report}."""
    cost, model = parse_cost_model(setup.cost), parse_acceptance(ACCEPTANCE[acceptance])
    unloaded = unloaded_tpot_ms(cost, setup.config)
    prompts = {c: category_prompts(c) for c in ("coding", "chat", "summarization")}
    spec = WorkloadSpec(rate=rate, num_requests=num_requests, output_tokens=setup.output_tokens)
    workload = from_bench_requests(build_workload(spec, unloaded, prompts, prefill_ms=cost.verify_ms))
    out = {}
    for policy in BASELINES + ADASERVES:
        config = replace(setup.config, policy=policy, max_num_seqs=seqs(policy))
        start = time.process_time()
        result = simulate(config, cost, model, workload)
        out[policy] = {"max_num_seqs": config.max_num_seqs, "cpu_seconds": time.process_time() - start}
        out[policy] |= result["categories"]["all"]
    return out


def judged(c: dict, joint: bool) -> tuple[float, float]:
    """(attainment, goodput) by joint SLOs or by TPOT alone."""
    if joint:
        return c["attainment"], c["goodput_tokens_per_s"]
    return c["attainment_tpot"], c["goodput_tpot_tokens_per_s"]


def ratio_row(rate: float, point: dict[str, dict], joint: bool) -> dict:
    best = max(BASELINES, key=lambda p: judged(point[p], joint))
    best_att, best_goodput = judged(point[best], joint)
    row = {"rate": rate, "best_baseline": best, "best_baseline_attainment": best_att}
    for policy in ADASERVES:
        att, goodput = judged(point[policy], joint)
        row[f"{policy}_attainment"] = att
        row[f"{policy}_ratio"] = att / best_att if best_att else None
        row[f"{policy}_goodput_ratio"] = goodput / best_goodput if best_goodput else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="4,8,12,16")
    ap.add_argument("--num-requests", type=int, default=1000)
    args = ap.parse_args()
    setup = make_setup("paper")
    rates = [float(r) for r in args.rates.split(",")]
    runs: dict[tuple, dict] = {}
    summary = {"setup": setup.cost, "num_requests": args.num_requests, "conditions": {}, "host_cpu": cpu_model()}
    for name, (acceptance, seqs, joint) in CONDITIONS.items():
        rows, points = [], []
        for rate in rates:
            key = (acceptance, seqs, rate)
            if key not in runs:  # (joint judges the paper's runs again)
                runs[key] = run_point(setup, acceptance, seqs, rate, args.num_requests)
            rows.append(ratio_row(rate, runs[key], joint))
            points.append({"rate": rate, "policies": runs[key]})
            r = rows[-1]
            print(
                f"{name:10s} rate {rate:g}: adaserve-paper {r['adaserve-paper_attainment']:.0%} "
                f"({r['adaserve-paper_ratio'] or 0:.2f}x), adaserve {r['adaserve_attainment']:.0%} "
                f"({r['adaserve_ratio'] or 0:.2f}x), best baseline {r['best_baseline']} "
                f"{r['best_baseline_attainment']:.0%}",
                flush=True,
            )
        summary["conditions"][name] = {"acceptance": ACCEPTANCE[acceptance], "joint": joint, "ratios": rows}
        summary["conditions"][name]["points"] = points
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "paper_protocol.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, OUT / "paper_protocol.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = summary["conditions"]
    fig, axes = plt.subplots(1, len(conditions), figsize=(4 * len(conditions), 3.4), sharey=True)
    for ax, (name, cond) in zip(axes, conditions.items()):
        rates = [r["rate"] for r in cond["ratios"]]
        for policy in ("adaserve-paper", "adaserve"):
            ax.plot(rates, [r[f"{policy}_attainment"] for r in cond["ratios"]], marker="o", label=policy)
        ax.plot(
            rates, [r["best_baseline_attainment"] for r in cond["ratios"]], "k--", marker="x", label="best baseline"
        )
        ax.set_title(f"{name} ({'joint' if cond['joint'] else 'TPOT only'})")
        ax.set_xlabel("requests / s")
    axes[0].set_ylabel("SLO attainment")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
