"""`adaserve simulate`: run | record | validate.

run       simulate policies on a workload (generated, a saved workload file, or a measured bench
          run's exact requests), sweeping a variable; same JSON/PNG as `adaserve bench sweep`
record    run a real draft/target pair on workload prompts and save its acceptance records
validate  replay each point of a measured `adaserve bench sweep` and compare
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from adaserve.bench.protocol import PROTOCOLS
from adaserve.sim.acceptance import DEFAULT_RECORDS
from adaserve.sim.config import SimConfig

if TYPE_CHECKING:  # (the commands import on use: `adaserve --help` stays quick)
    from adaserve.sim.commands import ModelSources, SimRunConfig
    from adaserve.sim.record import RecordConfig
    from adaserve.sim.validate import ValidateConfig


def add_simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="discrete-event simulation of the scheduler and policies at any scale")
    p.add_argument("action", nargs="?", default="run", choices=["run", "record", "validate"])
    p.add_argument(
        "--cost",
        default=None,
        help="profile:PATH | roofline:HW:TARGET[:DRAFT] | table:adaserve-a100-70b "
        "(default: the cached profile of --model/--draft)",
    )
    p.add_argument("--acceptance", default=None, help="recorded:PATH | parametric:top1=0.7,calibration=1.0,...")
    p.add_argument("--policies", default="none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve")
    p.add_argument("--variable", default="rate", choices=["rate", "urgent_share", "slo_scale"])
    p.add_argument(
        "--protocol",
        default="ours",
        choices=PROTOCOLS,
        help="paper: TPOT only, adaserve as adaserve-paper at 64 sequences, baselines at 512 (adaserve.bench.protocol)",
    )
    p.add_argument("--values", default="0.5")
    p.add_argument(
        "--from-bench",
        nargs="*",
        default=None,
        help="bench result JSONs: run replays their exact requests; record runs their prompts",
    )
    p.add_argument(
        "--bench-dir",
        nargs="+",
        default=["benchmarks/results/sweep_rate"],
        help="validate: a bench sweep's output dir, or several repeats of one sweep",
    )
    p.add_argument(
        "--tokenizer", default=None, help="model whose chat template counts prompt tokens (default ~4 chars/token)"
    )
    p.add_argument(
        "--slo-class",
        action="append",
        default=None,
        help="category SLO, e.g. coding=tpot:1.2x or chat=tpot:50ms (overrides the bench multiples)",
    )
    _add_server_args(p)
    from adaserve.bench.run import add_workload_args

    add_workload_args(p)
    p.set_defaults(func=cmd_simulate)


def _add_server_args(p) -> None:
    """The simulated server and its calibration; what record runs and where the outputs go."""
    p.add_argument(
        "--step-overhead-ms",
        type=float,
        default=0.0,
        help="per-iteration time beyond the forward passes (validate: with --calibration none)",
    )
    p.add_argument(
        "--calibration",
        default="host",
        choices=["host", "speed", "passes", "unloaded", "none"],
        help="validate: host = each server's logged host time per step; speed = also its measured/"
        "predicted pass time; passes = host, and each model's passes fitted against the profile "
        "(a weight per cost-model term and a cost per extra sequence) over the sweep's logs; "
        "unloaded = measured - simulated unloaded TPOT; none = --step-overhead-ms",
    )
    p.add_argument(
        "--replay-as",
        action="append",
        default=None,
        metavar="MEASURED=POLICY",
        help="validate: replay a measured policy as today's POLICY (adaserve=adaserve-cap for sweeps "
        "measured before the SLO planner)",
    )
    p.add_argument(
        "--sim-runs",
        type=int,
        default=5,
        help="validate: simulations per point (seeds --seed, --seed + 1, ...), averaged",
    )
    p.add_argument("--kv-capacity-tokens", type=int, default=SimConfig.kv_capacity_tokens)
    p.add_argument("--max-num-seqs", type=int, default=SimConfig.max_num_seqs)
    p.add_argument("--max-num-batched-tokens", type=int, default=SimConfig.max_num_batched_tokens)
    p.add_argument("--num-prompts", type=int, default=8, help="record: prompts of each category to run")
    p.add_argument("--out", default=str(DEFAULT_RECORDS), help="record: the records file")
    p.add_argument("--out-dir", default="benchmarks/results/sim", help="run/validate: where JSON and PNG go")
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="record: target; also the default --cost profile")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b", help="record: draft")
    p.add_argument(
        "--record-policy",
        default="dynamic-tree:16:8:8",
        help="record: the speculation policy while recording (its width is the top-k recorded); "
        "several, comma-separated: the later ones fill the positions the earlier ones missed",
    )


def cmd_simulate(args) -> None:
    if args.action == "record":
        from adaserve.sim.record import record

        record(record_config(args))
    elif args.action == "validate":
        from adaserve.sim.validate import validate

        validate(validate_config(args))
    else:
        from adaserve.sim.commands import run

        run(run_config(args))


def sim_config(args) -> SimConfig:
    """The simulated server the command line describes (before any calibration)."""
    return SimConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_capacity_tokens=args.kv_capacity_tokens,
        step_overhead_ms=args.step_overhead_ms,
        seed=args.seed,
    )


def model_sources(args) -> ModelSources:
    from adaserve.sim.commands import ModelSources

    return ModelSources(cost=args.cost, acceptance=args.acceptance, model=args.model, draft=args.draft)


def run_config(args) -> SimRunConfig:
    from adaserve.bench.protocol import paper_policies, paper_seqs
    from adaserve.bench.run import workload_spec
    from adaserve.sim.commands import SimRunConfig

    sim, policies, workload = sim_config(args), args.policies.split(","), workload_spec(vars(args))
    if args.protocol == "paper":
        policies = paper_policies(policies)
        sim = replace(sim, max_num_seqs_by_policy=tuple((p, paper_seqs(p)) for p in policies))
        workload = replace(workload, prefill_ms_per_token=None)  # no TTFT targets
    return SimRunConfig(
        sim=sim,
        models=model_sources(args),
        policies=tuple(policies),
        variable=args.variable,
        values=tuple(float(v) for v in args.values.split(",")),
        workload=workload,
        unloaded_tpot_ms=args.unloaded_tpot_ms,
        slo_classes=tuple(args.slo_class or ()),
        from_bench=tuple(Path(p) for p in args.from_bench or ()),
        workload_file=Path(args.workload_file) if args.workload_file else None,
        tokenizer=args.tokenizer,
        out_dir=Path(args.out_dir),
    )


def validate_config(args) -> ValidateConfig:
    from adaserve.sim.validate import ValidateConfig

    return ValidateConfig(
        bench_dirs=tuple(Path(d) for d in args.bench_dir),
        sim=sim_config(args),
        models=model_sources(args),
        calibration=args.calibration,
        sim_runs=args.sim_runs,
        out_dir=Path(args.out_dir),
        replay_as=dict(text.split("=", 1) for text in args.replay_as or ()),
    )


def record_config(args) -> RecordConfig:
    from adaserve.sim.record import RecordConfig

    return RecordConfig(
        model=args.model,
        draft=args.draft,
        policies=tuple(args.record_policy.split(",")),
        out=Path(args.out),
        from_bench=tuple(Path(p) for p in args.from_bench or ()),
        num_prompts=args.num_prompts,
        output_tokens=args.output_tokens,
        seed=args.seed,
    )
