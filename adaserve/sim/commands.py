"""`adaserve simulate run`: pick the cost and acceptance models, build the workloads, sweep."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from adaserve.bench.run import workload_spec
from adaserve.bench.workload import load_workload
from adaserve.sched.cost_model import CostModel
from adaserve.sim.acceptance import DEFAULT_RECORDS, AcceptanceModel, parse_acceptance
from adaserve.sim.config import SimConfig
from adaserve.sim.roofline import parse_cost_model
from adaserve.sim.run import generated_workload, sweep, unloaded_tpot_ms
from adaserve.sim.workloads import from_bench_requests, from_bench_result
from adaserve.slo import parse_slo_class


def find_profile(model: str, draft: str | None) -> Path:
    """The newest cached `adaserve profile` of this model pair (the engine caches one per pair)."""
    from adaserve.models.sources import cache_root, resolve_model

    want = {"model": str(resolve_model(model)), "draft": str(resolve_model(draft)) if draft else None}
    found = []
    for path in (cache_root() / "profiles").glob("*.json"):
        meta = json.loads(path.read_text()).get("meta", {})
        if meta.get("model") == want["model"] and meta.get("draft") == want["draft"]:
            found.append((meta.get("created", ""), path))
    if not found:
        raise ValueError(
            f"no cached profile of {model} + {draft}: run `adaserve profile --model {model} --draft {draft}`"
        )
    return max(found)[1]


def sim_config(args) -> SimConfig:
    return SimConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_capacity_tokens=args.kv_capacity_tokens,
        step_overhead_ms=args.step_overhead_ms,
        seed=args.seed,
    )


def load_models(args) -> tuple[CostModel, AcceptanceModel | None]:
    cost = parse_cost_model(args.cost or f"profile:{find_profile(args.model, args.draft)}")
    if args.acceptance:
        return cost, parse_acceptance(args.acceptance)
    return cost, parse_acceptance(f"recorded:{DEFAULT_RECORDS}") if DEFAULT_RECORDS.exists() else None


def tokenizer_for(name: str | None):
    if not name:
        return None
    from transformers import AutoTokenizer

    from adaserve.models.sources import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model(name)))


def run(args) -> dict:
    cost, acceptance = load_models(args)
    config = sim_config(args)
    policies = args.policies.split(",")
    out_dir = Path(args.out_dir)
    tokenizer = tokenizer_for(args.tokenizer)
    if args.from_bench:
        paths = {i: Path(p) for i, p in enumerate(args.from_bench)}
        per_prompt = acceptance is not None and acceptance.per_prompt  # its requests must name their prompts
        return sweep(
            policies,
            list(paths),
            lambda i: from_bench_result(paths[i], per_prompt),
            config,
            cost,
            acceptance,
            "bench file",
            out_dir,
        )
    if args.workload_file:
        fixed = from_bench_requests(load_workload(Path(args.workload_file)), tokenizer)
        return sweep(policies, [0.0], lambda _: fixed, config, cost, acceptance, "workload file", out_dir)
    unloaded = args.unloaded_tpot_ms or unloaded_tpot_ms(cost, config)
    print(f"unloaded per-token latency (simulated, plain decoding): {unloaded:.1f} ms", flush=True)
    base = workload_spec(args)
    if args.slo_class:  # per-category SLOs, absolute or relative, as multiples of the unloaded latency
        multiples = dict(base.slo_multiples)
        for text in args.slo_class:
            spec = parse_slo_class(text)
            multiples[spec.name] = spec.resolve(unloaded).tpot_ms / unloaded
        base = replace(base, slo_multiples=multiples)

    def make_workload(value: float):
        return generated_workload(replace(base, **{args.variable: value}), unloaded, tokenizer)

    summary = sweep(
        policies,
        [float(v) for v in args.values.split(",")],
        make_workload,
        config,
        cost,
        acceptance,
        args.variable,
        out_dir,
    )
    summary["unloaded_tpot_ms"] = unloaded
    return summary
