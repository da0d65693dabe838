"""`adaserve simulate validate`: replay every point of a measured `adaserve bench sweep` (its exact
requests: arrivals, categories, SLOs, prompt lengths) in the simulator, per policy, and compare
attainment and goodput. The simulated side is the mean of `--sim-runs` runs with different seeds
(they differ in which acceptance records are drawn: with 16 requests a point, one request near its
SLO is 6 points of attainment). Targets: attainment within 10 percentage points, goodput within 20 %."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from adaserve.sim.commands import load_models, sim_config
from adaserve.sim.run import simulate, unloaded_tpot_ms
from adaserve.sim.workloads import from_bench_result


def validate(args) -> dict:
    bench_dir = Path(args.bench_dir)
    summary = json.loads((bench_dir / "sweep_rate.json").read_text())
    cost, acceptance = load_models(args)
    config = sim_config(args)
    if args.step_overhead_ms < 0:  # auto: what the measured unloaded latency has beyond the model's passes
        simulated = unloaded_tpot_ms(cost, config)
        config = replace(config, step_overhead_ms=max(0.0, summary["unloaded_tpot_ms"] - simulated))
        print(f"step overhead {config.step_overhead_ms:.1f} ms = measured unloaded TPOT "
              f"{summary['unloaded_tpot_ms']:.1f} ms - simulated {simulated:.1f} ms", flush=True)
    rows = []
    for policy, points in summary["results"].items():
        if policy.startswith("vllm:"):
            continue  # another engine: its scheduler is not ours to simulate
        for point in points:
            path = bench_dir / f"{policy.replace(':', '-')}_rate_{point['value']}.json"
            workload = from_bench_result(path)
            runs = [simulate(replace(config, policy=policy, seed=config.seed + k), cost, acceptance, workload)
                    for k in range(args.sim_runs)]
            measured, simulated = point["categories"]["all"], _mean([run["categories"]["all"] for run in runs])
            rows.append(_row(policy, point["value"], measured, simulated))
            print(_format(rows[-1]), flush=True)
    ok = [r for r in rows if r["attainment_ok"] and r["goodput_ok"]]
    out = {"bench_dir": str(bench_dir), "cost_model": cost.meta, "step_overhead_ms": config.step_overhead_ms,
           "sim_runs": args.sim_runs, "first_seed": config.seed,
           "rows": rows, "num_within_targets": len(ok), "num_points": len(rows)}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(out, indent=1))
    print(validation_table(rows))
    print(f"{len(ok)}/{len(rows)} points within +-10 pp attainment and +-20 % goodput; wrote {out_dir}/validation.json")
    return out


def validation_table(rows: list[dict]) -> str:
    """Markdown: per policy and rate, measured -> simulated attainment and goodput; * = outside the targets."""
    rates = sorted({r["rate"] for r in rows})
    lines = ["| policy | " + " | ".join(f"rate {v}" for v in rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        cells = {r["rate"]: r for r in rows if r["policy"] == policy}
        lines.append(f"| {policy} | " + " | ".join(_cell(cells[v]) if v in cells else "-" for v in rates) + " |")
    return "\n".join(lines)


def _cell(r: dict) -> str:
    mark = "" if r["attainment_ok"] and r["goodput_ok"] else " *"
    return (f"{r['measured_attainment']:.0%} -> {r['simulated_attainment']:.0%}, "
            f"{r['measured_goodput']:.2f} -> {r['simulated_goodput']:.2f}{mark}")


def _mean(summaries: list[dict]) -> dict:
    """The simulated outcome averaged over runs that differ only in the acceptance draws."""
    tpots = [s["tpot_ms"]["median"] for s in summaries if s.get("tpot_ms")]
    return {"attainment": sum(s["attainment"] for s in summaries) / len(summaries),
            "goodput_tokens_per_s": sum(s["goodput_tokens_per_s"] for s in summaries) / len(summaries),
            "tpot_ms": {"median": sum(tpots) / len(tpots)} if tpots else None}


def _row(policy: str, rate: float, measured: dict, simulated: dict) -> dict:
    m_good, s_good = measured["goodput_tokens_per_s"], simulated["goodput_tokens_per_s"]
    rel = (s_good - m_good) / m_good if m_good > 0 else (0.0 if s_good == 0 else float("inf"))
    d_att = 100.0 * (simulated["attainment"] - measured["attainment"])
    return {"policy": policy, "rate": rate, "measured_attainment": measured["attainment"],
            "simulated_attainment": simulated["attainment"], "attainment_diff_pp": d_att,
            "measured_goodput": m_good, "simulated_goodput": s_good, "goodput_rel_diff": rel,
            "measured_tpot_p50_ms": (measured["tpot_ms"] or {}).get("median"),
            "simulated_tpot_p50_ms": (simulated["tpot_ms"] or {}).get("median"),
            "attainment_ok": abs(d_att) <= 10.0, "goodput_ok": abs(rel) <= 0.2}


def _format(r: dict) -> str:
    return (f"{r['policy']:14s} rate={r['rate']}: attainment {r['measured_attainment']:.0%} measured vs "
            f"{r['simulated_attainment']:.0%} simulated; goodput {r['measured_goodput']:.2f} vs {r['simulated_goodput']:.2f} "
            f"({r['goodput_rel_diff']:+.0%}); TPOT p50 {r['measured_tpot_p50_ms'] or 0:.0f} vs {r['simulated_tpot_p50_ms'] or 0:.0f} ms")
