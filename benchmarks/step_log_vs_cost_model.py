"""How well a profiled cost model predicts a live server's steps: read step logs written by
`adaserve serve --step-log` (or `adaserve bench sweep --step-log-dir`), predict every forward pass
from its logged shape exactly as the simulator would, and compare, per policy and kind of step.

    python benchmarks/step_log_vs_cost_model.py LOG.jsonl [LOG.jsonl ...]
        [--profile benchmarks/results/sim_validation/profile_qwen.json] [--out steps.json]

A pass's padded KV positions (attention groups pad to their longest member) count as context,
as in the simulator; logs written before that field existed have none.

Kinds: "decode" (one token per sequence, no draft), "prefill" (a step with prompt chunks, no
draft), "spec" (the draft ran). Per kind: the measured and predicted median step, the sum of
measured over the sum of predicted pass time (what a simulated clock accumulates), and the host
time per step outside the passes (scheduling, tree selection, sampling; the simulator's
step overhead).
"""

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path

from adaserve.engine.step_log import StepRecord, read_step_log
from adaserve.sched.cost_model import CostModel
from adaserve.sim.step_timing import fit_host_model, measured_pass_ms, predicted_pass_ms, run_timing


def step_kind(step: StepRecord) -> str:
    if any(p.model == "draft" for p in step.passes):
        return "spec"
    target = [p for p in step.passes if p.model == "target"]
    return "decode" if all(p.num_tokens == p.num_seqs for p in target) else "prefill"


def summarize(steps: list[StepRecord], cost: CostModel) -> dict:
    timing = run_timing(steps, cost)
    out = {
        "num_steps": len(steps),
        "measured_step_ms_p50": statistics.median(s.step_ms for s in steps),
        "predicted_passes_ms_p50": statistics.median(sum(predicted_pass_ms(cost, p) for p in s.passes) for s in steps),
        "passes_measured_over_predicted": timing.speed_factor,
        "host_ms_per_step_mean": timing.host_ms_per_step,
        "host_ms_per_step_p50": statistics.median(s.step_ms - sum(map(measured_pass_ms, s.passes)) for s in steps),
    }
    for model in ("target", "draft"):
        passes = [p for s in steps for p in s.passes if p.model == model]
        if passes:
            predicted = sum(predicted_pass_ms(cost, p) for p in passes)
            out[f"{model}_measured_over_predicted"] = sum(map(measured_pass_ms, passes)) / max(1e-9, predicted)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+")
    p.add_argument("--profile", default="benchmarks/results/sim_validation/profile_qwen.json")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cost = CostModel.load(Path(args.profile))
    results, every_step = {}, []
    for path in args.logs:
        steps = read_step_log(path)
        every_step += steps
        by_kind: dict[str, list[StepRecord]] = {}
        for s in steps:
            by_kind.setdefault(step_kind(s), []).append(s)
        policy = steps[0].policy if steps else Path(path).stem
        results[policy] = {kind: summarize(group, cost) for kind, group in sorted(by_kind.items())}
        results[policy]["all"] = summarize(steps, cost)
        for kind, r in results[policy].items():
            print(
                f"{policy:14s} {kind:8s} {r['num_steps']:5d} steps: step p50 {r['measured_step_ms_p50']:7.1f} ms, "
                f"passes predicted p50 {r['predicted_passes_ms_p50']:7.1f}; passes measured/predicted "
                f"{r['passes_measured_over_predicted']:.3f} (target {r.get('target_measured_over_predicted', 0):.3f}, "
                f"draft {r.get('draft_measured_over_predicted', 0):.3f}); host {r['host_ms_per_step_p50']:.1f} ms p50, "
                f"{r['host_ms_per_step_mean']:.1f} mean"
            )
    host = fit_host_model(every_step)
    print(
        f"host time per step, fitted over all {len(every_step)} steps: {host.ms_per_step:.2f} ms + "
        f"{host.ms_per_target_row:.3f} ms per target logits row + {host.ms_per_draft_row:.3f} ms per draft row"
    )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"profile": args.profile, "logs": args.logs, "host_model": asdict(host), "results": results}, indent=1
            )
        )


if __name__ == "__main__":
    main()
