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

    python benchmarks/slo_serving_sim.py --variable urgent_share|slo_scale [--rate 8] --acceptance recorded
    python benchmarks/slo_serving_sim.py --variable fluctuating --acceptance recorded
the paper's other three studies: the share of coding (tight) requests 0.1 to 0.9, the SLO scale 0.6
to 1.6 (both at rate 8), and a fluctuating load (20 s at half the mean rate, 20 s at 1.5x, for 120
s; mean rates 4 to 16). Each writes sim_<variable>_<acceptance>.json and .png, with adaserve's ratio to the
best other policy at every point ("ratios").

    python benchmarks/slo_serving_sim.py --setup cpu
simulates this machine instead: the cached profile of the Qwen2.5-Coder 1.5B + 0.5B pair (`adaserve
serve` writes it), the server's defaults (256 sequences, 512-token steps, 9,360 KV tokens), 48
output tokens, rates 0.1 to 0.4 requests/s, 200 requests per point, recorded acceptance; the same
workload as `adaserve bench sweep` sends (coding 1.2x the simulated unloaded per-token
latency). Writes sim_cpu_<acceptance>.json and .png; headline.json is left alone.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from adaserve.bench.datasets import category_prompts
from adaserve.bench.workload import WorkloadSpec, build_workload
from adaserve.kernels import cpu_model
from adaserve.sim.acceptance import DEFAULT_RECORDS, parse_acceptance
from adaserve.sim.commands import find_profile
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


@dataclass(frozen=True)
class Setup:
    name: str
    cost: str  # a cost model spec (adaserve.sim.roofline.parse_cost_model)
    config: SimConfig
    output_tokens: int
    rates: str
    num_requests: int


def make_setup(name: str) -> Setup:
    if name == "paper":
        return Setup("paper", "table:adaserve-a100-70b", A100X4_70B, 256, "4,8,12,16", 1000)
    if name == "cpu":  # the cached profile of the pair (`adaserve serve` or `adaserve profile` writes it)
        profile = find_profile("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
        return Setup("cpu", f"profile:{profile}", SimConfig(), 48, "0.1,0.2,0.3,0.4", 200)
    raise ValueError(f"unknown setup {name!r} (paper, cpu)")


# The paper's other studies: each varies one thing of the workload at a fixed rate (--rate).
VARIABLES = ("rate", "urgent_share", "slo_scale", "fluctuating")
FLUCTUATING_S = 120.0  # three cycles of the fluctuating load
DEFAULT_VALUES = {"urgent_share": "0.1,0.3,0.5,0.7,0.9", "slo_scale": "0.6,0.8,1.0,1.2,1.4,1.6"}


def workload_spec(setup: Setup, variable: str, value: float, rate: float, num_requests: int) -> WorkloadSpec:
    """rate: value is the rate. fluctuating: value is the mean rate, alternating 20 s at half of it
    and 20 s at 1.5x for FLUCTUATING_S (a request count would end the trace inside its first quiet
    piece at high rates). urgent_share, slo_scale: value is that, at `rate`."""
    spec = WorkloadSpec(rate=rate, num_requests=num_requests, output_tokens=setup.output_tokens)
    if variable == "fluctuating":
        pieces = f"20:{0.5 * value:g},20:{1.5 * value:g}"
        return replace(spec, arrival="fluctuating", pieces=pieces, num_requests=None, duration_s=FLUCTUATING_S)
    return replace(spec, **{variable: value})


def sweep(acceptance: str, setup: Setup, points: tuple[str, list[float], float], num_requests: int, policies) -> dict:
    variable, values, rate = points  # what varies, its values, the rate of the studies that fix it
    cost, model = parse_cost_model(setup.cost), parse_acceptance(ACCEPTANCE[acceptance])
    unloaded = unloaded_tpot_ms(cost, setup.config)
    prompts = {c: category_prompts(c) for c in ("coding", "chat", "summarization")}
    results: dict[str, list[dict]] = {p: [] for p in policies}
    for value in values:
        spec = workload_spec(setup, variable, value, rate, num_requests)
        requests = build_workload(spec, unloaded, prompts, prefill_ms=lambda n: cost.verify_ms(n))
        workload = from_bench_requests(requests)
        for policy in policies:
            start = time.process_time()
            result = simulate(replace(setup.config, policy=policy), cost, model, workload)
            c = result["categories"]["all"]
            results[policy].append({"value": value, "cpu_seconds": time.process_time() - start, **result})
            print(
                f"{acceptance} {variable} {value:g} {policy:13s} joint {c['attainment']:.0%} "
                f"(TPOT {c['attainment_tpot']:.0%}, TTFT {c['attainment_ttft']:.0%}), "
                f"goodput {c['goodput_tokens_per_s']:.1f} tok/s, TTFT p50 {c['ttft_ms']['median']:.0f} ms",
                flush=True,
            )
    summary = {"variable": variable, "acceptance": ACCEPTANCE[acceptance], "unloaded_tpot_ms": unloaded}
    if variable != "rate":
        summary["rate"] = rate
    return {**summary, "results": results, "ratios": ratios(results)}


def ratios(results: dict[str, list[dict]]) -> list[dict]:
    """At each point: adaserve's joint attainment and goodput over the best other policy's (not
    adaserve-cap, its own ablation); None where the best other attains nothing."""
    rows = []
    for i, point in enumerate(results["adaserve"]):
        others = {p: pts[i]["categories"]["all"] for p, pts in results.items() if not p.startswith("adaserve")}
        ada = point["categories"]["all"]
        best = max(others, key=lambda p: (others[p]["attainment"], others[p]["goodput_tokens_per_s"]))
        best_goodput = max(c["goodput_tokens_per_s"] for c in others.values())
        best_joint = others[best]["attainment"]
        rows.append(
            {
                "value": point["value"],
                "adaserve_joint": ada["attainment"],
                "best_other": best,
                "best_other_joint": best_joint,
                "attainment_ratio": ada["attainment"] / best_joint if best_joint else None,
                "goodput_ratio": ada["goodput_tokens_per_s"] / best_goodput if best_goodput else None,
            }
        )
    return rows


def headline_row(acceptance: str, summary: dict) -> dict:
    """The highest-load point of a rate sweep: adaserve against the best other policy."""
    row = dict(summary["ratios"][-1])
    return {"acceptance": acceptance, "rate": row.pop("value"), **row}


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
        ax.set_xlabel(
            {"rate": "requests per second", "fluctuating": "mean requests per second"}.get(
                summary["variable"], summary["variable"]
            )
        )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 105)
    axes[1].set_ylim(0, 105)
    axes[2].legend(fontsize=8)
    scale = "paper scale" if summary.get("setup", "paper") == "paper" else "the Qwen pair on this CPU"
    fig.suptitle(f"{scale} (simulated), acceptance {summary['acceptance']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", default="paper", choices=["paper", "cpu"])
    p.add_argument("--variable", default="rate", choices=VARIABLES)
    p.add_argument("--values", default=None, help="default: the setup's rates, or the study's values")
    p.add_argument("--rate", type=float, default=None, help="urgent_share, slo_scale: rate (default: 2nd of the setup)")
    p.add_argument("--num-requests", type=int, default=None, help="default: the setup's")
    p.add_argument("--policies", default=POLICIES)
    p.add_argument("--acceptance", default=",".join(ACCEPTANCE))
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    setup = make_setup(args.setup)
    values = [float(v) for v in (args.values or DEFAULT_VALUES.get(args.variable, setup.rates)).split(",")]
    rate = args.rate or float(setup.rates.split(",")[1])
    num_requests = args.num_requests or setup.num_requests
    prefix = "sim_" + ("" if setup.name == "paper" else f"{setup.name}_")
    prefix += "" if args.variable == "rate" else f"{args.variable}_"
    rows = []
    for acceptance in args.acceptance.split(","):
        summary = sweep(acceptance, setup, (args.variable, values, rate), num_requests, args.policies.split(","))
        summary.update(setup=setup.name, cost=setup.cost, num_requests=num_requests, machine=cpu_model())
        (OUT / f"{prefix}{acceptance}.json").write_text(json.dumps(summary, indent=1))
        plot(summary, OUT / f"{prefix}{acceptance}.png")
        rows.append(headline_row(acceptance, summary))
        print(json.dumps(rows[-1]), flush=True)
    if setup.name != "paper" or args.variable != "rate":
        return
    path = OUT / "headline.json"
    headline = json.loads(path.read_text()) if path.exists() else {}
    headline["sim"] = rows
    path.write_text(json.dumps(headline, indent=1))


if __name__ == "__main__":
    main()
