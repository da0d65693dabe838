"""Simulated runs with the benchmark's outputs: one point = one policy on one workload -> the same
metrics JSON as `adaserve bench`; a sweep = policies x values of a variable -> JSON per point,
a summary JSON and the same PNG as `adaserve bench sweep`."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from adaserve.bench.report import bench_report
from adaserve.bench.workload import WorkloadSpec, build_workload
from adaserve.sched.cost_model import CostModel
from adaserve.sim.acceptance import AcceptanceModel
from adaserve.sim.config import SimConfig
from adaserve.sim.simulator import Simulator
from adaserve.sim.workloads import SimRequest, from_bench_requests
from adaserve.slo import SLO


def simulate(
    config: SimConfig,
    cost: CostModel,
    acceptance: AcceptanceModel | None,
    workload: list[SimRequest],
    tpots_out: list | None = None,
) -> dict:
    """Metrics of one simulated run. Wall time runs from the start of the run (arrival offsets count
    from it) to the last token, as `adaserve bench` measures it. tpots_out: gets the list of every
    request's TPOT (s), in arrival order."""
    sim = Simulator(config, cost, acceptance)
    start = time.perf_counter()
    records = sim.run(workload)
    elapsed = time.perf_counter() - start
    if tpots_out is not None:
        tpots_out.append([r.timing.tpot_s for r in records])
    wall = max((r.chunk_times[-1] for r in records if r.chunk_times), default=0.0)
    return {
        "policy": config.policy,
        "simulated": True,
        "num_steps": sim.num_steps,
        "sim_seconds": elapsed,
        **bench_report(records, max(wall, 1e-9)),
    }


def unloaded_tpot_ms(cost: CostModel, config: SimConfig, num_prompt_tokens: int = 200, max_tokens: int = 64) -> float:
    """What `adaserve bench` calibrates: TPOT of one request alone, plain decoding."""
    one = [SimRequest(0.0, "calibration", num_prompt_tokens, max_tokens, SLO())]
    result = simulate(replace(config, policy="none"), cost, None, one)
    return result["categories"]["all"]["tpot_ms"]["median"]


def generated_workload(spec: WorkloadSpec, unloaded_ms: float, tokenizer=None) -> list[SimRequest]:
    from adaserve.bench.datasets import category_prompts

    prompts = {c: category_prompts(c) for c in spec.category_weights()}
    return from_bench_requests(build_workload(spec, unloaded_ms, prompts), tokenizer)


def sweep(
    policies: list[str],
    values: list[float],
    make_workload,
    config: SimConfig,
    cost: CostModel,
    acceptance: AcceptanceModel | None,
    variable: str,
    out_dir: Path | None,
) -> dict:
    """make_workload(value) -> list[SimRequest]. Every policy sees the same workloads."""
    results: dict[str, list[dict]] = {}
    workloads = {v: make_workload(v) for v in values}
    for policy in policies:
        for value in values:
            result = simulate(config.for_policy(policy), cost, acceptance, workloads[value])
            result["value"] = value
            results.setdefault(policy, []).append(result)
            c = result["categories"]["all"]
            print(
                f"{policy:14s} {variable}={value}: attainment {c['attainment']:.0%}, goodput "
                f"{c['goodput_tokens_per_s']:.2f} tok/s ({result['num_steps']} steps, {result['sim_seconds']:.1f} s)",
                flush=True,
            )
    summary = {"variable": variable, "simulated": True, "cost_model": cost.meta, "results": results}
    if out_dir is not None:
        from adaserve.bench.sweep import plot_sweep

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"sim_sweep_{variable}.json").write_text(json.dumps(summary, indent=1))
        plot_sweep(summary, out_dir / f"sim_sweep_{variable}.png")
    return summary
