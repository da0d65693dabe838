"""`adaserve simulate validate`: replay every point of measured `adaserve bench sweep`s (their exact
requests: arrivals, categories, SLOs, prompt lengths, and their prompts when the acceptance
records name prompts) in the simulator, per policy, and compare
attainment and goodput. The simulated side is the mean of `--sim-runs` runs with different seeds
(they differ in which acceptance records are drawn: with 16 requests a point, one request near its
SLO is 6 points of attainment). Given repeats of one sweep (same workloads and SLOs), the measured
side is their mean, each repeat is replayed with its own calibration, and each repeat is also
compared with the first: that is how far the measurement itself moves between runs.
Targets: attainment within 10 percentage points, goodput within 20 %.
Each policy's replay is calibrated with what its server measured (`--calibration`, see calibrated())."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from adaserve.bench.client import BenchRecord
from adaserve.engine.step_log import StepRecord, read_step_log
from adaserve.sched.cost_model import CostModel
from adaserve.sim.commands import ModelSources, load_models
from adaserve.sim.config import PassCorrection, SimConfig
from adaserve.sim.run import simulate, unloaded_tpot_ms
from adaserve.sim.step_timing import HostModel, fit_host_model, fit_pass_correction, run_timing
from adaserve.sim.workloads import from_bench_result
from adaserve.slo import SLO


@dataclass(frozen=True)
class ValidateConfig:
    """`adaserve simulate validate`: the sweeps to replay and the simulated server to replay them on.

    bench_dirs: a bench sweep's output dirs (repeats of one sweep: the same workloads and SLOs)
    sim: the simulated server before calibration (its seed is the first run's; step_overhead_ms
        counts with calibration "none")
    calibration: how each policy's replay is calibrated (see calibrated())
    sim_runs: simulations per point (seeds sim.seed, sim.seed + 1, ...), averaged
    replay_as: measured policy name -> the policy that ran then, under its name today (e.g. sweeps
        measured before the SLO planner ran "adaserve" as today's "adaserve-cap")"""

    bench_dirs: tuple[Path, ...]
    sim: SimConfig = field(default_factory=SimConfig)
    models: ModelSources = field(default_factory=ModelSources)
    calibration: str = "host"
    sim_runs: int = 5
    out_dir: Path = Path("benchmarks/results/sim")
    replay_as: dict[str, str] = field(default_factory=dict)


def validate(config: ValidateConfig) -> dict:
    bench_dirs = [Path(d) for d in config.bench_dirs]
    summaries = [json.loads((d / "sweep_rate.json").read_text()) for d in bench_dirs]
    cost, acceptance = load_models(config.models)
    rows, repeat_rows, timings = [], [], {}
    for policy, points in summaries[0]["results"].items():
        if policy.startswith("vllm:"):
            continue  # another engine: its scheduler is not ours to simulate
        configs = []  # per sweep: the simulated server, calibrated with what that sweep's servers logged
        for d, summary in zip(bench_dirs, summaries):
            sim, timings[f"{d}:{policy}"] = calibrated(config.calibration, config.sim, policy, d, summary, cost)
            configs.append(replace(sim, policy=config.replay_as.get(policy, policy)))
            print(
                f"{policy} ({config.calibration}, {d}): host {sim.step_overhead_ms:.2f} ms per step + "
                f"{sim.host_ms_per_target_row:.3f} per target row + {sim.host_ms_per_draft_row:.3f} per draft "
                f"row, pass times x{sim.time_scale:.3f}, target {sim.target_pass}, draft {sim.draft_pass}",
                flush=True,
            )
        for k, point in enumerate(points):
            measured = [_same_point(s, policy, k, point["value"])["categories"]["all"] for s in summaries]
            simulated, errors, num_own = _replay(
                bench_dirs, configs, policy, point["value"], cost, acceptance, config.sim_runs
            )
            rows.append(_row(policy, point["value"], _mean(measured), simulated))
            rows[-1]["measured_attainment_range"] = [
                min(m["attainment"] for m in measured),
                max(m["attainment"] for m in measured),
            ]
            rows[-1].update(request_tpot_rel_errors=errors, num_requests_with_own_prompt_records=num_own)
            print(_format(rows[-1]), flush=True)
            for r, repeat in enumerate(measured[1:], 1):  # each repeat as if it predicted the first sweep
                repeat_rows.append(_row(policy, point["value"], measured[0], repeat) | {"repeat": r})
    out = {
        "bench_dirs": [str(d) for d in bench_dirs],
        "cost_model": cost.meta,
        "calibration": config.calibration,
        "timings": timings,
        "sim_runs": config.sim_runs,
        "first_seed": config.sim.seed,
        "rows": rows,
        "num_within_targets": _num_ok(rows),
        "num_points": len(rows),
        "request_tpot_abs_rel_error": _spread([abs(e) for r in rows for e in r["request_tpot_rel_errors"]]),
        "num_requests_with_own_prompt_records": sum(r["num_requests_with_own_prompt_records"] for r in rows),
    }
    if repeat_rows:
        out.update(repeat_rows=repeat_rows, repeat_num_within_targets=_num_ok(repeat_rows))
    _report(out, Path(config.out_dir))
    return out


def _replay(
    bench_dirs: list[Path],
    configs: list[SimConfig],
    policy: str,
    value: float,
    cost: CostModel,
    acceptance,
    sim_runs: int,
) -> tuple[dict, list[float], int]:
    """The point's mean outcome over every sweep's exact requests x `sim_runs` seeds; per request
    and sweep, its simulated TPOT (mean over the seeds) / its measured TPOT - 1; and how many of
    those requests found records of their own prompt (the rest draw their category's)."""
    runs, errors, per_prompt = [], [], acceptance is not None and acceptance.per_prompt
    num_own = 0
    for d, config in zip(bench_dirs, configs):
        path = d / f"{policy.replace(':', '-')}_rate_{value}.json"
        workload, tpots = from_bench_result(path, per_prompt), []
        if per_prompt:
            num_own += sum(1 for w in workload if w.prompt_key in acceptance.prompt_pools)
        runs += [
            simulate(replace(config, seed=config.seed + k), cost, acceptance, workload, tpots) for k in range(sim_runs)
        ]
        for i, measured in enumerate(_measured_tpots(path)):
            simulated = [run[i] for run in tpots if run[i] is not None]
            if measured and simulated:
                errors.append(sum(simulated) / len(simulated) / measured - 1.0)
    return _mean([r["categories"]["all"] for r in runs]), errors, num_own


def _measured_tpots(path: Path) -> list[float | None]:
    """Every request's TPOT (s) as the benchmark measured it, in arrival order (the replay's order)."""
    records = sorted(json.loads(path.read_text())["records"], key=lambda r: r["arrival_time"])
    return [BenchRecord(**{**r, "slo": SLO(**r["slo"])}).timing.tpot_s for r in records]


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    ranked = sorted(values)
    return {
        "num": len(ranked),
        "median": ranked[len(ranked) // 2],
        "p90": ranked[int(0.9 * (len(ranked) - 1))],
        "max": ranked[-1],
    }


def _report(out: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(out, indent=1))
    print(validation_table(out["rows"]))
    print(f"{out['num_within_targets']}/{out['num_points']} points within +-10 pp attainment and +-20 % goodput")
    spread = out["request_tpot_abs_rel_error"]
    if spread:
        print(
            f"per request, simulated TPOT vs measured ({spread['num']} requests): |error| median "
            f"{spread['median']:.1%}, p90 {spread['p90']:.1%}, max {spread['max']:.1%}"
        )
    if out["num_requests_with_own_prompt_records"]:
        print(
            f"{out['num_requests_with_own_prompt_records']} of {spread['num']} replayed requests drew from their "
            "own prompt's records"
        )
    for k in sorted({r["repeat"] for r in out.get("repeat_rows", [])}):
        rows = [r for r in out["repeat_rows"] if r["repeat"] == k]
        print(
            f"repeat {k} vs the first sweep:\n{validation_table(rows)}\n{_num_ok(rows)}/{len(rows)} points of "
            "the repeat within the same targets of the first sweep"
        )
    print(f"wrote {out_dir}/validation.json")


def _same_point(summary: dict, policy: str, k: int, value: float) -> dict:
    points = summary["results"].get(policy, [])
    if k >= len(points) or points[k]["value"] != value:
        raise ValueError(f"the sweeps differ: {policy} has no point {value} in every one (repeats must match)")
    return points[k]


def _num_ok(rows: list[dict]) -> int:
    return sum(1 for r in rows if r["attainment_ok"] and r["goodput_ok"])


def calibrated(
    how: str, config: SimConfig, policy: str, bench_dir: Path, summary: dict, cost: CostModel
) -> tuple[SimConfig, dict]:
    """The simulated server for one policy's replay, and what it was calibrated with.

    none:     --step-overhead-ms as given; pass times straight from the cost model
    unloaded: step overhead = the sweep's measured unloaded TPOT - the simulated one
    host:     host time per step from the servers' step logs (a HostModel fitted over all of them)
    speed:    host, and pass times scaled by measured / predicted over this policy's logged run (the
              machine ran slower or faster than when it was profiled)
    passes:   host, and each model's passes corrected by a PassCorrection fitted over all the sweep's
              logged passes (a weight per term of the prediction, and a cost per extra sequence in a
              pass the profile does not see)
    """
    if how == "none":
        return config, {"step_overhead_ms": config.step_overhead_ms, "time_scale": 1.0}
    if how == "unloaded":
        simulated = unloaded_tpot_ms(cost, replace(config, step_overhead_ms=0.0))
        overhead = max(0.0, summary["unloaded_tpot_ms"] - simulated)
        return replace(config, step_overhead_ms=overhead), {"step_overhead_ms": overhead, "time_scale": 1.0}
    logs = sorted((bench_dir / "step_logs").glob("*.jsonl*"))  # (.jsonl.gz as committed)
    log_path = next((p for p in logs if p.name.split(".")[0] == policy.replace(":", "-")), None)
    if log_path is None:
        raise ValueError(
            f"--calibration {how} needs the servers' step logs (none for {policy} in "
            f"{bench_dir}/step_logs): run the sweep with --step-log-dir <out-dir>/step_logs, "
            "or use --calibration unloaded"
        )
    host = _host_model(tuple(logs))
    config = replace(
        config,
        step_overhead_ms=host.ms_per_step,
        host_ms_per_target_row=host.ms_per_target_row,
        host_ms_per_draft_row=host.ms_per_draft_row,
    )
    info = {"host_model": asdict(host), "time_scale": 1.0}
    if how == "passes":
        target, draft = _pass_corrections(tuple(logs), cost)
        config = replace(config, target_pass=target, draft_pass=draft)
        info.update(target_pass=asdict(target), draft_pass=asdict(draft))
    if how == "speed":
        timing = run_timing(read_step_log(log_path), cost)
        config = replace(config, time_scale=timing.speed_factor)
        info.update(asdict(timing), time_scale=timing.speed_factor)
    return config, info


@lru_cache(maxsize=4)
def _pass_corrections(logs: tuple[Path, ...], cost: CostModel) -> tuple[PassCorrection, PassCorrection]:
    """(target, draft): one engine on one machine, fitted over every server's passes."""
    passes = [p for s in _logged_steps(logs) for p in s.passes]
    return tuple(fit_pass_correction([p for p in passes if p.model == m], cost) for m in ("target", "draft"))


@lru_cache(maxsize=4)
def _host_model(logs: tuple[Path, ...]) -> HostModel:
    """One engine, one host model: fitted over every server's steps."""
    return fit_host_model(_logged_steps(logs))


@lru_cache(maxsize=4)
def _logged_steps(logs: tuple[Path, ...]) -> list[StepRecord]:
    """Every step of a sweep's servers, read once for both fits."""
    return [s for path in logs for s in read_step_log(path)]


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
    return (
        f"{r['measured_attainment']:.0%} -> {r['simulated_attainment']:.0%}, "
        f"{r['measured_goodput']:.2f} -> {r['simulated_goodput']:.2f}{mark}"
    )


def _mean(summaries: list[dict]) -> dict:
    """The simulated outcome averaged over runs that differ only in the acceptance draws."""
    tpots = [s["tpot_ms"]["median"] for s in summaries if s.get("tpot_ms")]
    return {
        "attainment": sum(s["attainment"] for s in summaries) / len(summaries),
        "goodput_tokens_per_s": sum(s["goodput_tokens_per_s"] for s in summaries) / len(summaries),
        "tpot_ms": {"median": sum(tpots) / len(tpots)} if tpots else None,
    }


def _row(policy: str, rate: float, measured: dict, simulated: dict) -> dict:
    m_good, s_good = measured["goodput_tokens_per_s"], simulated["goodput_tokens_per_s"]
    rel = (s_good - m_good) / m_good if m_good > 0 else (0.0 if s_good == 0 else float("inf"))
    d_att = 100.0 * (simulated["attainment"] - measured["attainment"])
    return {
        "policy": policy,
        "rate": rate,
        "measured_attainment": measured["attainment"],
        "simulated_attainment": simulated["attainment"],
        "attainment_diff_pp": d_att,
        "measured_goodput": m_good,
        "simulated_goodput": s_good,
        "goodput_rel_diff": rel,
        "measured_tpot_p50_ms": (measured["tpot_ms"] or {}).get("median"),
        "simulated_tpot_p50_ms": (simulated["tpot_ms"] or {}).get("median"),
        "attainment_ok": abs(d_att) <= 10.0,
        "goodput_ok": abs(rel) <= 0.2,
    }


def _format(r: dict) -> str:
    return (
        f"{r['policy']:14s} rate={r['rate']}: attainment {r['measured_attainment']:.0%} measured vs "
        f"{r['simulated_attainment']:.0%} simulated; goodput {r['measured_goodput']:.2f} vs "
        f"{r['simulated_goodput']:.2f} ({r['goodput_rel_diff']:+.0%}); TPOT p50 {r['measured_tpot_p50_ms'] or 0:.0f} "
        f"vs {r['simulated_tpot_p50_ms'] or 0:.0f} ms"
    )
