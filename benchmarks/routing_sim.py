"""Routing across simulated replicas at paper scale: round-robin, Ray Serve's power-of-two choices
and the SLO-aware modes (adaserve.deploy.router, the function the Ray router calls), each
replica running the full adaserve engine (planner and overload control) on the AdaServe artifact's
Llama-3.1-70B / 4 x A100 table, with the paper's SLO mix as benchmarks/slo_serving_sim.py.

    python benchmarks/routing_sim.py [--replicas 2,4,8,16] [--rate-per-replica 8]
        [--requests-per-replica 300] [--fluctuating-replicas 8] [--tiers 1.5,4:0.5,0.25,0.25]
        [--tier-variants '1.5:0.5,0.5;1.5,4:0.375,0.25,0.375']

The multi-SLO workload runs at rate-per-replica x N requests/s (near one replica's saturation:
alone it attains 62 % at rate 8, see docs/results.md); the fluctuating one alternates 20 s at half
and 20 s at 1.5x that mean for 120 s. `tiered` splits the replicas by --tiers, "TPOT bounds as
multiples of the unloaded TPOT : shares of the replicas": by default half for TPOT targets up to
1.5x (coding, at 1.2x), a quarter up to 4x (chat, at 2x), a quarter for the rest (summarization, at
6x); --tier-variants reruns it at 8 replicas with other splits, to show how much the split matters.
Writes benchmarks/results/routing/routing_sim.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from slo_serving_sim import ACCEPTANCE, make_setup, workload_spec

from adaserve.bench.datasets import category_prompts
from adaserve.bench.report import bench_report
from adaserve.bench.workload import build_workload
from adaserve.deploy.router import MODES, Tiers
from adaserve.kernels import cpu_model
from adaserve.sim.acceptance import parse_acceptance
from adaserve.sim.cluster import ClusterSimulator
from adaserve.sim.roofline import parse_cost_model
from adaserve.sim.run import unloaded_tpot_ms
from adaserve.sim.workloads import from_bench_requests

OUT = Path("benchmarks/results/routing")


def parse_tiers(spec: str, unloaded_ms: float) -> Tiers:
    """'1.5,4:0.5,0.25,0.25' -> TPOT bounds 1.5x and 4x the unloaded TPOT, shares 0.5, 0.25, 0.25."""
    multiples, shares = spec.split(":")
    return Tiers.parse(",".join(f"{float(m) * unloaded_ms:g}" for m in multiples.split(",")), shares)


def run_point(setup, cost, acceptance, workload, num_replicas: int, mode: str, tiers: str) -> dict:
    start = time.process_time()
    config = replace(setup.config, policy="adaserve")
    split = parse_tiers(tiers, unloaded_tpot_ms(cost, setup.config))
    cluster = ClusterSimulator(config, cost, acceptance, num_replicas, mode, tiers=split)
    records = cluster.run(workload)
    wall = max((r.chunk_times[-1] for r in records if r.chunk_times), default=1e-9)
    report = bench_report(records, wall)
    return {
        "mode": mode,
        "tiers": tiers if mode == "tiered" else None,
        "num_replicas": num_replicas,
        "num_requests": len(workload),
        "cpu_seconds": time.process_time() - start,
        "routed_per_replica": [cluster.stats.num_routed[k] for k in range(num_replicas)],
        "num_routed_infeasible": cluster.stats.num_infeasible,
        "num_backoff": cluster.stats.num_backoff,
        **report,
    }


def study(args, variable: str, replicas: list[int], modes: list[str], tiers: str) -> list[dict]:
    setup = make_setup("paper")
    cost, acceptance = parse_cost_model(setup.cost), parse_acceptance(ACCEPTANCE[args.acceptance])
    unloaded = unloaded_tpot_ms(cost, setup.config)
    prompts = {c: category_prompts(c) for c in ("coding", "chat", "summarization")}
    rows = []
    for n in replicas:
        rate = args.rate_per_replica * n
        spec = workload_spec(setup, variable, rate, rate, args.requests_per_replica * n)
        workload = from_bench_requests(build_workload(spec, unloaded, prompts, prefill_ms=lambda k: cost.verify_ms(k)))
        for mode in modes:
            row = {"workload": variable, "rate": rate, **run_point(setup, cost, acceptance, workload, n, mode, tiers)}
            c = row["categories"]["all"]
            print(
                f"{variable} N={n} rate {rate:g} {mode:12s} {row['tiers'] or ''} joint {c['attainment']:.1%} "
                f"(TPOT "
                f"{c['attainment_tpot']:.1%}, TTFT {c['attainment_ttft']:.1%}) goodput "
                f"{c['goodput_tokens_per_s']:.0f} tok/s ({row['cpu_seconds']:.0f} s)",
                flush=True,
            )
            rows.append(row)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Each SLO-aware mode against power-of-two at the same point."""
    out = []
    base = {(r["workload"], r["num_replicas"]): r for r in rows if r["mode"] == "power_of_two"}
    rows = [r for r in rows if r["workload"] != "tier_variant"] + [
        {**r, "workload": "rate"} for r in rows if r["workload"] == "tier_variant"
    ]
    for r in rows:
        b = base.get((r["workload"], r["num_replicas"]))
        if b is None or r["mode"] == "power_of_two":
            continue
        c, bc = r["categories"]["all"], b["categories"]["all"]
        out.append(
            {
                "workload": r["workload"],
                "num_replicas": r["num_replicas"],
                "mode": r["mode"],
                "tiers": r["tiers"],
                "joint_ratio": c["attainment"] / bc["attainment"] if bc["attainment"] else None,
                "goodput_ratio": c["goodput_tokens_per_s"] / bc["goodput_tokens_per_s"]
                if bc["goodput_tokens_per_s"]
                else None,
            }
        )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        pts = [r for r in rows if r["mode"] == mode and r["workload"] == "rate"]
        if not pts:
            continue
        xs = [r["num_replicas"] for r in pts]
        axes[0].plot(xs, [100 * r["categories"]["all"]["attainment"] for r in pts], "o-", label=mode)
        axes[1].plot(xs, [r["categories"]["all"]["goodput_tokens_per_s"] for r in pts], "o-", label=mode)
    for ax, label in zip(axes, ("joint SLO attainment (%)", "goodput, joint (tokens/s)")):
        ax.set_xlabel("replicas (rate grows with them)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 105)
    axes[1].legend(fontsize=8)
    fig.suptitle("routing across simulated adaserve replicas, paper scale")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="2,4,8,16")
    p.add_argument("--rate-per-replica", type=float, default=8.0)
    p.add_argument("--requests-per-replica", type=int, default=300)
    p.add_argument("--fluctuating-replicas", default="8", help="'' to skip the fluctuating workload")
    p.add_argument("--modes", default="round_robin,power_of_two,spread,pack,tiered")
    p.add_argument("--tiers", default="1.5,4:0.5,0.25,0.25", help="tiered: bounds (x unloaded TPOT):shares")
    p.add_argument(
        "--tier-variants", default="1.5:0.5,0.5;1.5,4:0.375,0.25,0.375", help="tiered at 8 replicas ('' to skip)"
    )
    p.add_argument("--acceptance", default="recorded", choices=list(ACCEPTANCE))
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    rows = study(args, "rate", [int(n) for n in args.replicas.split(",")], modes, args.tiers)
    if args.fluctuating_replicas:
        rows += study(args, "fluctuating", [int(n) for n in args.fluctuating_replicas.split(",")], modes, args.tiers)
    for tiers in [v for v in args.tier_variants.split(";") if v]:
        rows += [{**r, "workload": "tier_variant"} for r in study(args, "rate", [8], ["tiered"], tiers)]
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"args": vars(args), "machine": cpu_model(), "rows": rows, "ratios": ratios(rows)}
    (OUT / "routing_sim.json").write_text(json.dumps(summary, indent=1))
    plot(rows, OUT / "routing_sim.png")
    for r in summary["ratios"]:
        print(r)


if __name__ == "__main__":
    main()
