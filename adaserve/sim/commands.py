"""`adaserve simulate run`: pick the cost and acceptance models, build the workloads, sweep."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from adaserve.bench.sweep import DEFAULT_POLICIES
from adaserve.bench.workload import WorkloadSpec, load_workload
from adaserve.sched.cost_model import CostModel
from adaserve.sim.acceptance import DEFAULT_RECORDS, AcceptanceModel, parse_acceptance
from adaserve.sim.config import SimConfig
from adaserve.sim.roofline import parse_cost_model
from adaserve.sim.run import generated_workload, sweep, unloaded_tpot_ms
from adaserve.sim.workloads import from_bench_requests, from_bench_result
from adaserve.slo import parse_slo_class


@dataclass(frozen=True)
class ModelSources:
    """Where the simulator's cost and acceptance models come from (see load_models)."""

    cost: str | None = None  # profile:PATH | roofline:HW:TARGET[:DRAFT] | table:NAME; None: model's cached profile
    acceptance: str | None = None  # recorded:PATH | parametric:...; None: the default records, if any
    model: str | None = "qwen2.5-coder-1.5b"
    draft: str | None = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class SimRunConfig:
    """`adaserve simulate run`: policies x values of a variable on one workload source, in order of
    precedence: measured bench results (their exact requests), a saved workload file, or `workload`
    (generated; SLOs relative to unloaded_tpot_ms, simulated if None)."""

    sim: SimConfig = field(default_factory=SimConfig)
    models: ModelSources = field(default_factory=ModelSources)
    policies: tuple[str, ...] = DEFAULT_POLICIES
    variable: str = "rate"  # a WorkloadSpec field
    values: tuple[float, ...] = (0.5,)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    unloaded_tpot_ms: float | None = None
    slo_classes: tuple[str, ...] = ()  # category SLOs, e.g. "coding=tpot:1.2x" (override the multiples)
    from_bench: tuple[Path, ...] = ()
    workload_file: Path | None = None
    tokenizer: str | None = None  # model whose chat template counts prompt tokens (default ~4 chars/token)
    out_dir: Path = Path("benchmarks/results/sim")


def find_profile(model: str, draft: str | None) -> Path:
    """The cached `adaserve profile` of this model pair measured with today's kernels on this
    machine, else the newest of the pair (the engine caches one per pair and configuration; an
    older one may be another build's, or one taken on a loaded machine)."""
    from adaserve.kernels import kernel_version
    from adaserve.models.sources import cache_root, resolve_model

    want = {"model": str(resolve_model(model)), "draft": str(resolve_model(draft)) if draft else None}
    found = []
    for path in (cache_root() / "profiles").glob("*.json"):
        meta = json.loads(path.read_text()).get("meta", {})
        if meta.get("model") == want["model"] and meta.get("draft") == want["draft"]:
            found.append((meta.get("kernels") == kernel_version(), meta.get("created", ""), path))
    if not found:
        raise ValueError(
            f"no cached profile of {model} + {draft}: run `adaserve profile --model {model} --draft {draft}`"
        )
    return max(found)[-1]


def load_models(sources: ModelSources) -> tuple[CostModel, AcceptanceModel | None]:
    cost = parse_cost_model(sources.cost or f"profile:{find_profile(sources.model, sources.draft)}")
    if sources.acceptance:
        return cost, parse_acceptance(sources.acceptance)
    return cost, parse_acceptance(f"recorded:{DEFAULT_RECORDS}") if DEFAULT_RECORDS.exists() else None


def tokenizer_for(name: str | None):
    if not name:
        return None
    from transformers import AutoTokenizer

    from adaserve.models.sources import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model(name)))


def run(config: SimRunConfig) -> dict:
    cost, acceptance = load_models(config.models)
    sim, policies, out_dir = config.sim, list(config.policies), Path(config.out_dir)
    tokenizer = tokenizer_for(config.tokenizer)
    if config.from_bench:
        paths = {i: Path(p) for i, p in enumerate(config.from_bench)}
        per_prompt = acceptance is not None and acceptance.per_prompt  # its requests must name their prompts
        return sweep(
            policies,
            list(paths),
            lambda i: from_bench_result(paths[i], per_prompt),
            sim,
            cost,
            acceptance,
            "bench file",
            out_dir,
        )
    if config.workload_file:
        fixed = from_bench_requests(load_workload(Path(config.workload_file)), tokenizer)
        return sweep(policies, [0.0], lambda _: fixed, sim, cost, acceptance, "workload file", out_dir)
    unloaded = config.unloaded_tpot_ms or unloaded_tpot_ms(cost, sim)
    print(f"unloaded per-token latency (simulated, plain decoding): {unloaded:.1f} ms", flush=True)
    base = config.workload
    if config.slo_classes:  # per-category SLOs, absolute or relative, as multiples of the unloaded latency
        multiples = dict(base.slo_multiples)
        for text in config.slo_classes:
            spec = parse_slo_class(text)
            multiples[spec.name] = spec.resolve(unloaded).tpot_ms / unloaded
        base = replace(base, slo_multiples=multiples)

    def make_workload(value: float):
        return generated_workload(replace(base, **{config.variable: value}), unloaded, tokenizer)

    summary = sweep(policies, list(config.values), make_workload, sim, cost, acceptance, config.variable, out_dir)
    summary["unloaded_tpot_ms"] = unloaded
    return summary
