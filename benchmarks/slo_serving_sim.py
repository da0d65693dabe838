"""SLO serving at paper scale, in the simulator, judged by joint SLOs (TTFT and TPOT): every policy as
published, AdaServe's selection alone (adaserve-cap: the paper's depth rule and the fixed SLO prefill
cap) and the full system (adaserve: the step planner with overload control), over request rates up to
clear overload, under three acceptance models.

Setup as benchmarks/sim_paper_scale.py: Llama-3.1-70B on 4 x A100 (the AdaServe artifact's latency
table), 256 sequences and 2048-token steps for every policy, the paper's SLO mix (coding 1.2x the
unloaded per-token latency, chat 2x, summarization 6x; 60/20/20), 256 output tokens. TTFT targets:
10 / 20 / 40 unloaded token times plus 3 x the prompt's prefill (adaserve.bench.workload).

    python benchmarks/slo_serving_sim.py [--rates 4,8,12,16] [--num-requests 1000]
writes benchmarks/results/slo_serving/sim_<acceptance>.json and .png, and the "sim" rows of
benchmarks/results/slo_serving/headline.json (the highest-load point of each acceptance model).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

from adaserve.bench.datasets import category_prompts
from adaserve.bench.workload import WorkloadSpec, build_workload
from adaserve.sim.acceptance import DEFAULT_RECORDS, parse_acceptance
from adaserve.sim.config import SimConfig
from adaserve.sim.roofline import parse_cost_model
from adaserve.sim.run import simulate, unloaded_tpot_ms
from adaserve.sim.workloads import from_bench_requests

POLICIES = "none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve-cap,adaserve"
ACCEPTANCE = {
    "recorded": f"recorded:{DEFAULT_RECORDS}",
    "top1_0.6": "parametric:top1=0.6",
    "top1_0.8": "parametric:top1=0.8",
}
A100X4_70B = SimConfig(max_num_seqs=256, max_num_batched_tokens=2048, kv_capacity_tokens=480_000)
OUT = Path("benchmarks/results/slo_serving")


def sweep(acceptance: str, rates: list[float], num_requests: int, policies: list[str]) -> dict:
    cost, model = parse_cost_model("table:adaserve-a100-70b"), parse_acceptance(ACCEPTANCE[acceptance])
    unloaded = unloaded_tpot_ms(cost, A100X4_70B)
    prompts = {c: category_prompts(c) for c in ("coding", "chat", "summarization")}
    results: dict[str, list[dict]] = {p: [] for p in policies}
    for rate in rates:
        spec = WorkloadSpec(rate=rate, num_requests=num_requests, output_tokens=256)
        requests = build_workload(spec, unloaded, prompts, prefill_ms=lambda n: cost.verify_ms(n))
        workload = from_bench_requests(requests)
        for policy in policies:
            start = time.process_time()
            result = simulate(replace(A100X4_70B, policy=policy), cost, model, workload)
            c = result["categories"]["all"]
            results[policy].append({"value": rate, "cpu_seconds": time.process_time() - start, **result})
            print(
                f"{acceptance} rate {rate:g} {policy:13s} joint {c['attainment']:.0%} (TPOT {c['attainment_tpot']:.0%}"
                f", TTFT {c['attainment_ttft']:.0%}), goodput {c['goodput_tokens_per_s']:.0f} tok/s, "
                f"TTFT p50 {c['ttft_ms']['median']:.0f} ms",
                flush=True,
            )
    return {"variable": "rate", "acceptance": ACCEPTANCE[acceptance], "unloaded_tpot_ms": unloaded, "results": results}


def headline_row(acceptance: str, summary: dict) -> dict:
    """The highest-load point: adaserve against the best other policy (not adaserve-cap, its own ablation)."""
    last = {p: points[-1]["categories"]["all"] for p, points in summary["results"].items()}
    others = {p: c for p, c in last.items() if not p.startswith("adaserve")}
    best = max(others, key=lambda p: (others[p]["attainment"], others[p]["goodput_tokens_per_s"]))
    best_goodput = max(c["goodput_tokens_per_s"] for c in others.values())
    ada = last["adaserve"]
    return {
        "acceptance": acceptance,
        "rate": summary["results"]["adaserve"][-1]["value"],
        "adaserve_joint": ada["attainment"],
        "best_other": best,
        "best_other_joint": others[best]["attainment"],
        "attainment_ratio": ada["attainment"] / others[best]["attainment"] if others[best]["attainment"] else None,
        "goodput_ratio": ada["goodput_tokens_per_s"] / best_goodput if best_goodput else None,
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    keys = (("attainment", "joint SLO attainment (%)"), ("attainment_tpot", "TPOT-only attainment (%)"))
    for policy, points in summary["results"].items():
        xs = [p["value"] for p in points]
        for ax, (key, _) in zip(axes, keys):
            ax.plot(xs, [100 * p["categories"]["all"][key] for p in points], "o-", label=policy)
        axes[2].plot(xs, [p["categories"]["all"]["goodput_tokens_per_s"] for p in points], "o-", label=policy)
    for ax, label in zip(axes, [k[1] for k in keys] + ["goodput, joint (tokens/s)"]):
        ax.set_xlabel("requests per second")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 105)
    axes[1].set_ylim(0, 105)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"paper scale (simulated), acceptance {summary['acceptance']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="4,8,12,16")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--policies", default=POLICIES)
    p.add_argument("--acceptance", default=",".join(ACCEPTANCE))
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for acceptance in args.acceptance.split(","):
        rates = [float(r) for r in args.rates.split(",")]
        summary = sweep(acceptance, rates, args.num_requests, args.policies.split(","))
        summary.update(num_requests=args.num_requests, machine=platform.processor() or platform.machine())
        (OUT / f"sim_{acceptance}.json").write_text(json.dumps(summary, indent=1))
        plot(summary, OUT / f"sim_{acceptance}.png")
        rows.append(headline_row(acceptance, summary))
        print(json.dumps(rows[-1]), flush=True)
    path = OUT / "headline.json"
    headline = json.loads(path.read_text()) if path.exists() else {}
    headline["sim"] = rows
    path.write_text(json.dumps(headline, indent=1))


if __name__ == "__main__":
    main()
