"""`adaserve bench`: calibrate the unloaded per-token latency, build (or replay) a workload, drive
an OpenAI-compatible server with it, write the metrics JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import httpx

from adaserve.bench.client import BenchRequest, run_load
from adaserve.bench.datasets import category_prompts
from adaserve.bench.report import bench_report
from adaserve.bench.workload import WorkloadSpec, build_workload, load_workload, save_workload
from adaserve.slo import SLO


def served_model(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def calibrate(url: str, model: str, num_requests: int = 3, max_tokens: int = 64) -> float:
    """Median TPOT (ms) of requests sent one at a time to an idle server."""
    prompts = category_prompts("coding")[:num_requests]
    tpots = []
    for prompt in prompts:
        req = BenchRequest(0.0, "calibration", [{"role": "user", "content": prompt}], max_tokens, SLO())
        record = asyncio.run(run_load(url, model, [req], send_slo=False, progress=False))[0]
        if record.error or record.timing.tpot_s is None:
            raise RuntimeError(f"calibration request failed: {record.error}")
        tpots.append(record.timing.tpot_s * 1000.0)
    return statistics.median(tpots)


def run_bench(args) -> dict:
    url = args.url.rstrip("/")
    model = args.model or served_model(url)
    if args.workload_file:
        requests = load_workload(Path(args.workload_file))
        unloaded = None
    else:
        unloaded = args.unloaded_tpot_ms or calibrate(url, model)
        spec = workload_spec(args)
        prompts = {c: category_prompts(c) for c in spec.category_weights()}
        requests = build_workload(spec, unloaded, prompts)
    if args.save_workload:
        save_workload(Path(args.save_workload), requests)
    start = time.perf_counter()
    records = asyncio.run(run_load(url, model, requests, send_slo=not args.no_slo, api_key=args.api_key))
    wall = time.perf_counter() - start
    plain_args = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    result = {
        "url": url,
        "model": model,
        "unloaded_tpot_ms": unloaded,
        "args": plain_args,
        **bench_report(records, wall),
        "records": [r.to_dict() for r in records],
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=asdict))
    return result


def sent_requests(result: dict) -> list[BenchRequest]:
    """The requests a bench result was measured with, in its records' order: rebuilt from its
    arguments exactly as run_bench built them (or its workload file), checked against its records.
    For results written before records named their prompts."""
    args = Namespace(**result["args"])
    if getattr(args, "workload_file", None):
        requests = load_workload(Path(args.workload_file))
    else:
        spec = workload_spec(args)
        prompts = {c: category_prompts(c) for c in spec.category_weights()}
        requests = build_workload(spec, result["unloaded_tpot_ms"], prompts)
    records = result["records"]
    same = len(requests) == len(records) and all(
        q.category == r["category"] and asdict(q.slo) == r["slo"] for q, r in zip(requests, records)
    )
    # One prompt, one length: a prompt source that changed since the run would show here too.
    lengths: dict[str, set[int]] = {}
    for q, r in zip(requests, records):
        lengths.setdefault(q.prompt_key, set()).add((r.get("server_usage") or {}).get("prompt_tokens", -1))
    if not same or any(len(n) > 1 for n in lengths.values()):
        raise ValueError("the bench result's records do not match the workload its arguments build")
    return requests


def add_bench_args(p) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="default: the server's first model")
    p.add_argument("--api-key", default=None)
    add_workload_args(p)
    p.add_argument("--no-slo", action="store_true", help="don't send SLOs (servers without SLO support)")
    p.add_argument("--save-workload", default=None)
    p.add_argument("--out", default=None, help="metrics JSON")


def add_workload_args(p) -> None:
    """What a workload is made of; shared with `adaserve simulate`."""
    p.add_argument("--rate", type=float, default=0.5, help="requests per second")
    p.add_argument("--num-requests", type=int, default=50)
    p.add_argument("--duration", type=float, default=None, help="seconds (instead of a request count)")
    p.add_argument("--arrival", default="poisson", choices=["poisson", "gamma", "fluctuating"])
    p.add_argument("--cv", type=float, default=2.0, help="gamma arrivals: coefficient of variation")
    p.add_argument("--pieces", default="30:0.25,30:1.0", help="fluctuating arrivals: seconds:rate,...")
    p.add_argument("--urgent-share", type=float, default=None, help="share of coding (tight-SLO) requests")
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--slo-scale", type=float, default=1.0)
    p.add_argument("--unloaded-tpot-ms", type=float, default=None, help="skip calibration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workload-file", default=None, help="replay a saved workload (JSON lines)")


def workload_spec(args) -> WorkloadSpec:
    return WorkloadSpec(
        rate=args.rate,
        num_requests=args.num_requests,
        duration_s=args.duration,
        arrival=args.arrival,
        cv=args.cv,
        pieces=args.pieces,
        urgent_share=args.urgent_share,
        output_tokens=args.output_tokens,
        slo_scale=args.slo_scale,
        seed=args.seed,
    )


def print_summary(result: dict) -> None:
    print(
        f"\n{'category':<14} {'requests':>8} {'attained':>9} {'goodput':>12} "
        f"{'TTFT p50':>9} {'TPOT p50':>9} {'TPOT p90':>9}"
    )
    for name, c in result["categories"].items():
        ttft, tpot = c["ttft_ms"] or {}, c["tpot_ms"] or {}
        fmt = lambda d, k: f"{d[k]:.0f} ms" if d else "-"
        print(
            f"{name:<14} {c['num_requests']:>8} {c['attainment']:>8.0%} {c['goodput_tokens_per_s']:>8.2f} t/s "
            f"{fmt(ttft, 'median'):>9} {fmt(tpot, 'median'):>9} {fmt(tpot, 'p90'):>9}"
        )
