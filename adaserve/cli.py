"""adaserve command line: download | generate | demo | profile | serve | bench | simulate."""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from adaserve.config import parse_memory

DEMO_PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Explain what a hash map is in two sentences.",
    "Write a haiku about autumn.",
    "What is the difference between a list and a tuple in Python?",
]


def _engine_args(
    p: argparse.ArgumentParser, default_model: str = "smollm2-135m", default_policy: str | None = "none"
) -> None:
    p.add_argument("--model", default=default_model, help="preset, local HF dir, .gguf file or hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kv-cache-memory", default="512MiB", help="bytes for the KV cache, e.g. 512MiB, 2GiB")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="recompute every prompt (default: share the KV of full blocks of common prefixes)",
    )
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "gguf", "fp32"],
        help="gguf: keep a GGUF model's weights quantized (int4/int8 CPU kernels); auto: gguf when possible",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="activations and KV cache with --weights fp32; auto: bf16 where the hardware computes it natively "
        "(AVX512-BF16/AMX CPUs, CUDA), else fp32. GGUF kernels take fp32 (int8 inside)",
    )
    p.add_argument("--draft", default=None, help="draft model (preset, dir, .gguf) or 'ngram'")
    p.add_argument(
        "--policy",
        default=default_policy,
        help="none, chunked, chain:K, static-tree, dynamic-tree, smartspec, adaserve, adaserve-cap, adaserve-equal",
    )
    p.add_argument("--cost-model", default=None, help="profile JSON (default: cached per model pair)")
    p.add_argument(
        "--no-draft-int4",
        dest="draft_int4",
        action="store_false",
        help="keep a GGUF draft's int8 matrices (default: requantized to int4, a faster draft; same output)",
    )


def engine_config(args, **overrides):
    """The EngineConfig that the shared engine flags (_engine_args) describe, with overrides."""
    from adaserve.config import EngineConfig

    return EngineConfig(
        **{
            "model": args.model,
            "device": args.device,
            "kv_cache_memory": parse_memory(args.kv_cache_memory),
            "block_size": args.block_size,
            "enable_prefix_caching": args.prefix_caching,
            "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "max_model_len": args.max_model_len,
            "num_threads": args.threads,
            "weights": args.weights,
            "dtype": args.dtype,
            "draft": args.draft,
            "spec_policy": args.policy or "none",
            "cost_model": args.cost_model,
            "draft_int4": args.draft_int4,
            **overrides,
        }
    )


def _llm(args):
    from dataclasses import asdict

    from adaserve.engine.llm import LLM

    return LLM(**asdict(engine_config(args)))


def cmd_bench(args) -> None:
    from adaserve.bench.run import bench_config, print_summary, run_bench

    if args.action == "sweep":
        from adaserve.bench.sweep import sweep, sweep_config

        summary = sweep(sweep_config(args))
        print(f"wrote {args.out_dir}/sweep_{summary['variable']}.json and .png")
        return
    result = run_bench(bench_config(args))
    print_summary(result)
    if args.out:
        print(f"wrote {args.out}")


def cmd_demo(args) -> None:
    from adaserve.bench.demo import DEMO_LOAD, DemoConfig, run

    load = DEMO_LOAD if args.load is None else args.load
    server_args = tuple(shlex.split(args.server_args))
    run(DemoConfig(args.model, args.policy, args.requests, args.rate, load, args.max_tokens, server_args))


def cmd_profile(args) -> None:
    from pathlib import Path

    from adaserve.engine.core import EngineCore

    engine = EngineCore(engine_config(args, spec_policy="none", cost_model=None))  # (measures, loads no profile)
    cost = engine.load_cost_model(refresh=args.refresh)
    print(cost.to_json())
    print(
        f"verify budget (2x one-token latency): {cost.verify_budget()} tokens; "
        f"draft budget: {cost.draft_budget()} tokens",
        file=sys.stderr,
    )
    if args.out:
        cost.save(Path(args.out))


def cmd_download(args) -> None:
    from adaserve.models.sources import fp32_weights, resolve_model

    for name in args.models:
        model_dir = resolve_model(name)
        print(f"{name}: {fp32_weights(model_dir) if args.fp32 else model_dir}")


def cmd_generate(args) -> None:
    from adaserve.sampling import SamplingParams

    llm = _llm(args)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    conversations = [[{"role": "user", "content": p}] for p in (args.prompts or DEMO_PROMPTS)]
    start = time.perf_counter()
    outs = llm.chat(conversations, params)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(o.token_ids) for o in outs)
    for conv, out in zip(conversations, outs):
        print(f"\n### {conv[0]['content']}\n{out.text.strip()}")
        decode = (out.token_times[-1] - out.first_token_time) / max(1, len(out.token_ids) - 1)
        ttft = out.first_token_time - out.arrival_time
        print(
            f"[{len(out.token_ids)} tokens, {out.finish_reason.value}, "
            f"TTFT {ttft * 1e3:.0f} ms, TPOT {decode * 1e3:.1f} ms]"
        )
    print(
        f"\n{len(outs)} requests batched, {num_tokens} tokens in {elapsed:.2f} s: {num_tokens / elapsed:.1f} tokens/s"
    )


# TPOT: the paper's ratios. TTFT: 10 / 20 / 40 unloaded token times (urgent classes queue least)
# plus 3x the prompt's own prefill, as the benchmark's workloads (adaserve.bench.workload).
DEFAULT_SLO_CLASSES = ["coding=tpot:1.2x,ttft:10x", "chat=tpot:2x,ttft:20x", "summarization=tpot:6x,ttft:40x"]


def build_server(args):
    """(the started AsyncEngine, the FastAPI app) that `adaserve serve` runs with these flags."""
    from adaserve.server.app import create_app

    async_engine, server_config = build_engine(args)
    return async_engine, create_app(async_engine, server_config)


def build_engine(args):
    """(the started AsyncEngine, the ServerConfig) of `adaserve serve` with these flags: also what
    each Ray Serve engine replica runs (adaserve.deploy.ray_app)."""
    import logging

    from adaserve.engine.async_engine import AsyncEngine
    from adaserve.engine.core import EngineCore
    from adaserve.server.app import ServerConfig
    from adaserve.slo import parse_slo_class

    model = args.model_pos or args.model
    draft = args.draft
    if draft is None and model == "qwen2.5-coder-1.5b":
        draft = "qwen2.5-coder-0.5b"  # the default pair
    policy = args.policy or ("adaserve" if draft else "none")
    specs = [parse_slo_class(c) for c in (args.slo_class or DEFAULT_SLO_CLASSES)]
    config = engine_config(args, model=model, draft=draft, spec_policy=policy, step_log=args.step_log)
    unloaded_ms, cost = None, None

    def build() -> EngineCore:  # on the engine thread (see AsyncEngine), profiling included
        nonlocal unloaded_ms, cost
        engine = EngineCore(config)
        if any(c.is_relative for c in specs):
            cost = engine.cost_model or engine.load_cost_model()
            unloaded_ms = cost.verify_ms(1, 256)  # plain decoding, one request, a short context
        return engine

    async_engine = AsyncEngine(build, max_pending_requests=args.max_pending_requests)
    async_engine.start()
    engine = async_engine.engine
    classes = {c.name: c.resolve(unloaded_ms) for c in specs}
    for name, c in classes.items():
        ttft = f"{c.ttft_base_ms} ms + {c.ttft_prefill_scale} x prefill" if c.ttft_prefill_scale else c.ttft_base_ms
        logging.info("SLO class %s: tpot %s ms, ttft %s", name, c.tpot_ms, ttft)
    server_config = ServerConfig(
        served_model_name=args.served_model_name or model,
        model_aliases=(model, str(engine.runner.model_dir)),
        api_key=args.api_key,
        slo_classes=classes,
        prefill_ms=cost.verify_ms if cost is not None else None,
        default_slo_class=args.default_slo_class,
    )
    return async_engine, server_config


def cmd_serve(args) -> None:
    import logging

    from adaserve.server.lifecycle import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.replicas is not None or args.autoscale:
        if (args.replicas or 1) < 1:
            raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
        if args.router == "tiered":
            if args.tier_tpot_ms is None:
                raise ValueError("--router tiered needs --tier-tpot-ms (the tiers' TPOT bounds)")
            from adaserve.deploy.router import Tiers

            Tiers.parse(args.tier_tpot_ms, args.tier_shares)  # (checks them before Ray starts)
        try:
            from adaserve.deploy import ray_app
        except ImportError as e:
            raise ValueError(f"--replicas needs Ray Serve: pip install -e '.[ray]' ({e})") from e
        args.replicas = args.replicas or 1
        ray_app.run(args)
        return
    async_engine, app = build_server(args)
    try:
        serve(app, async_engine, args.host, args.port, args.drain_timeout)
    finally:
        async_engine.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch and convert models into the cache")
    p.add_argument("models", nargs="+")
    p.add_argument("--fp32", action="store_true", help="also write dequantized fp32 safetensors (for peers, HF)")
    p.set_defaults(func=cmd_download)
    for name, help_text in [("generate", "generate for prompts (chat template)")]:
        p = sub.add_parser(name, help=help_text)
        _engine_args(p)
        p.add_argument("prompts", nargs="*")
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float, default=0.0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=None)
        p.set_defaults(func=cmd_generate)
    p = sub.add_parser("demo", help="start the server on the default pair, send a mixed-SLO load, report attainment")
    p.add_argument("--model", default=None, help="default: the Qwen2.5-Coder 1.5B + 0.5B pair")
    p.add_argument("--policy", default=None)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--rate", type=float, default=None, help="requests per second (Poisson); default: from --load")
    p.add_argument(
        "--load",
        type=float,
        default=None,
        help="mean requests in flight at the latency a request has alone, measured first (default 1)",
    )
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--server-args", default="", help="more `adaserve serve` flags, e.g. '--step-log steps.jsonl'")
    p.set_defaults(func=cmd_demo)
    _add_bench_parser(sub)
    _add_serve_parser(sub)
    p = sub.add_parser("profile", help="measure (or show the cached) cost model of a model pair on this machine")
    _engine_args(p)
    p.add_argument("--refresh", action="store_true", help="measure again even if a profile is cached")
    p.add_argument("--out", default=None, help="also write the profile JSON here")
    p.set_defaults(func=cmd_profile)
    from adaserve.sim.cli import add_simulate_parser

    add_simulate_parser(sub)
    return parser


def _add_bench_parser(sub) -> None:
    from adaserve.bench.run import add_bench_args
    from adaserve.bench.sweep import add_sweep_args

    p = sub.add_parser("bench", help="drive an OpenAI-compatible server with a multi-SLO workload")
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "sweep"],
        help="run: one workload against --url; sweep: start a server per policy and sweep a variable",
    )
    add_bench_args(p)
    add_sweep_args(p)
    p.set_defaults(func=cmd_bench)


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server (default: the Qwen2.5-Coder 1.5B + 0.5B pair)")
    _engine_args(p, default_model="qwen2.5-coder-1.5b", default_policy=None)
    p.add_argument("model_pos", nargs="?", default=None, metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument(
        "--slo-class",
        action="append",
        help="NAME=tpot:<N>ms|<N>x[,ttft:<N>ms|<N>x] (repeatable; ttft:Nx = N unloaded token times + 3x the "
        f"prompt's prefill); default {' '.join(DEFAULT_SLO_CLASSES)}",
    )
    p.add_argument("--default-slo-class", default=None, help="class of requests that name none")
    p.add_argument("--step-log", default=None, help="append a JSON line per engine step (passes, shapes, times) here")
    p.add_argument("--max-pending-requests", type=int, default=256, help="beyond this, 429")
    p.add_argument(
        "--drain-timeout", type=float, default=120.0, help="on SIGTERM, seconds to let running requests finish"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ray = p.add_argument_group("replicas on Ray Serve (pip install -e '.[ray]'; docs/serving.md#replicas)")
    ray.add_argument("--replicas", type=int, default=None, help="engine replicas behind one endpoint (Ray Serve)")
    ray.add_argument(
        "--router",
        default="spread",
        choices=["spread", "pack", "tiered", "power_of_two", "round_robin"],
        help="replica routing: SLO-aware spread, pack or tiered (adaserve.deploy.router), or Ray's power of two",
    )
    ray.add_argument(
        "--tier-tpot-ms",
        default=None,
        metavar="MS[,MS...]",
        help="--router tiered: ascending TPOT bounds; tier k takes targets up to the k-th, the last the rest",
    )
    ray.add_argument(
        "--tier-shares",
        default=None,
        metavar="SHARE,SHARE[,...]",
        help="--router tiered: each tier's share of the replicas (default: equal)",
    )
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="scale replicas on SLO pressure")
    p.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # a clear message, not a traceback, for the user-facing errors
        from adaserve.models.sources import ModelSourceError

        if isinstance(e, (ModelSourceError, ValueError)):
            sys.exit(f"error: {e}")
        raise


if __name__ == "__main__":
    main()
