"""`adaserve bench`: calibrate the unloaded per-token latency, build (or replay) a workload, drive
an OpenAI-compatible server with it, write the metrics JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx

from adaserve.bench.client import BenchRecord, BenchRequest, run_load
from adaserve.bench.datasets import category_prompts
from adaserve.bench.protocol import PROTOCOLS
from adaserve.bench.report import bench_report
from adaserve.bench.workload import WorkloadSpec, build_workload, load_workload, save_workload
from adaserve.slo import SLO


@dataclass(frozen=True)
class BenchConfig:
    """One `adaserve bench` run: a workload against a server.

    context: more of what the run was started with (the command line's other flags, the sweep
    that ran this point), recorded as given in the result's "args" beside the config's own values
    (which win); never read."""

    url: str = "http://127.0.0.1:8000"
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    model: str | None = None  # None: the server's first model
    api_key: str | None = None  # sent, never recorded
    unloaded_tpot_ms: float | None = None  # None: calibrate on the server
    workload_file: str | None = None  # replay these requests instead of building `workload`
    send_slo: bool = True
    ttft: bool = True  # TTFT targets (joint SLOs): calibrate the server's prefill (unless the workload has it)
    save_workload: str | None = None
    out: str | None = None  # the metrics JSON
    context: Mapping[str, Any] = field(default_factory=dict)

    def recorded_args(self) -> dict:
        """The result's "args": flat, keyed by the command line's flag names, as sent_requests()
        reads them back; without the API key."""
        own = {
            "url": self.url,
            "model": self.model,
            **workload_flags(self.workload),
            "unloaded_tpot_ms": self.unloaded_tpot_ms,
            "workload_file": self.workload_file,
            "no_slo": not self.send_slo,
            "no_ttft": not self.ttft,
            "save_workload": self.save_workload,
            "out": self.out,
        }
        return {k: v for k, v in {**self.context, **own}.items() if k != "api_key"}


def served_model(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def _send_alone(url: str, model: str, prompt: str, max_tokens: int, note: str | None = None) -> BenchRecord:
    """One calibration request, nothing else in flight, no SLO; `note` goes first as a system
    message (a prompt of its own: it shares no cached prefix with another)."""
    messages = [{"role": "user", "content": prompt}]
    if note is not None:
        messages.insert(0, {"role": "system", "content": note})
    req = BenchRequest(0.0, "calibration", messages, max_tokens, SLO())
    return asyncio.run(run_load(url, model, [req], send_slo=False, progress=False))[0]


def calibrate(url: str, model: str, num_requests: int = 3, max_tokens: int = 64) -> float:
    """Median TPOT (ms) of requests sent one at a time to an idle server."""
    prompts = category_prompts("coding")[:num_requests]
    tpots = []
    for prompt in prompts:
        record = _send_alone(url, model, prompt, max_tokens)
        if record.error or record.timing.tpot_s is None:
            raise RuntimeError(f"calibration request failed: {record.error}")
        tpots.append(record.timing.tpot_s * 1000.0)
    return statistics.median(tpots)


CALIBRATION_PROMPT_CHARS = 4000  # about 1,000 tokens: long enough that the prefill dominates its TTFT


def calibrate_prefill(url: str, model: str, unloaded_tpot_ms: float, num_runs: int = 2) -> float:
    """An idle server's prefill time per prompt token (ms): the fastest TTFT of a long summarization
    prompt (the longest of up to ~1,000 tokens; one output token), less one unloaded token time,
    over its prompt tokens. Each run leads with its own note: a server's prefix cache would serve a
    repeat of the same prompt from the first run's KV (0.13 ms per token measured, not ~6)."""
    prompt = max((p for p in category_prompts("summarization") if len(p) <= CALIBRATION_PROMPT_CHARS), key=len)
    per_token = []
    for i in range(num_runs):
        record = _send_alone(url, model, prompt, 1, note=f"Prefill calibration {i} ({uuid.uuid4().hex}).")
        num_prompt_tokens = (record.server_usage or {}).get("prompt_tokens")
        if record.error or record.timing.ttft_s is None or not num_prompt_tokens:
            raise RuntimeError(f"prefill calibration request failed: {record.error or 'no usage'}")
        per_token.append(max(0.0, record.timing.ttft_s * 1000.0 - unloaded_tpot_ms) / num_prompt_tokens)
    return min(per_token)


def with_ttft_targets(config: BenchConfig, url: str, model: str, unloaded_tpot_ms: float) -> BenchConfig:
    """The config with the server's prefill calibrated into its workload (TTFT targets), if asked."""
    if not config.ttft or config.workload.prefill_ms_per_token is not None:
        return config
    ms = calibrate_prefill(url, model, unloaded_tpot_ms)
    return replace(config, workload=replace(config.workload, prefill_ms_per_token=round(ms, 4)))


# Prefix cache counters (tokens looked up, tokens found) as adaserve and vLLM name them.
PREFIX_CACHE_METRICS = (
    ("adaserve_prefix_cache_queries_total", "adaserve_prefix_cache_hits_total"),
    ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"),
)


def prefix_cache_counts(url: str) -> tuple[float, float] | None:
    """The server's prefix cache (queries, hits) in tokens, from /metrics; None if it has none."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        sample, value = line.rsplit(" ", 1)
        name = sample.split("{")[0]
        values[name] = values.get(name, 0.0) + float(value)  # (labelled series summed)
    for queries, hits in PREFIX_CACHE_METRICS:
        if queries in values and hits in values:
            return values[queries], values[hits]
    return None


def prefix_hit_rate(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Hits / queries between two prefix_cache_counts readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def run_bench(config: BenchConfig) -> dict:
    url = config.url.rstrip("/")
    model = config.model or served_model(url)
    if config.workload_file:
        requests = load_workload(Path(config.workload_file))
        unloaded = None
    else:
        unloaded = config.unloaded_tpot_ms or calibrate(url, model)
        config = with_ttft_targets(config, url, model, unloaded)
        spec = config.workload
        prompts = {c: category_prompts(c) for c in spec.category_weights()}
        requests = build_workload(spec, unloaded, prompts)
    if config.save_workload:
        save_workload(Path(config.save_workload), requests)
    counts = prefix_cache_counts(url)
    start = time.perf_counter()
    records = asyncio.run(run_load(url, model, requests, send_slo=config.send_slo, api_key=config.api_key))
    wall = time.perf_counter() - start
    result = {
        "url": url,
        "model": model,
        "unloaded_tpot_ms": unloaded,
        "prefix_cache_hit_rate": prefix_hit_rate(counts, prefix_cache_counts(url)),
        "args": config.recorded_args(),
        **bench_report(records, wall),
        "records": [r.to_dict() for r in records],
    }
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text(json.dumps(result, indent=1, default=asdict))
    return result


def sent_requests(result: dict) -> list[BenchRequest]:
    """The requests a bench result was measured with, in its records' order: rebuilt from its
    arguments exactly as run_bench built them (or its workload file), checked against its records.
    For results written before records named their prompts."""
    args = result["args"]
    if args.get("workload_file"):
        requests = load_workload(Path(args["workload_file"]))
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
    p.add_argument(
        "--no-ttft",
        action="store_true",
        help="no TTFT targets (TPOT only, the paper's protocol); else the server's "
        "prefill per prompt token is calibrated and every request gets a TTFT target that grows with its prompt",
    )
    p.add_argument(
        "--prefill-ms-per-token", type=float, default=None, help="TTFT targets: skip the prefill calibration"
    )
    p.add_argument(
        "--protocol",
        default="ours",
        choices=PROTOCOLS,
        help="paper: TPOT only; a sweep also runs adaserve as adaserve-paper at 64 sequences and our "
        "baselines at 512 (adaserve.bench.protocol)",
    )
    p.add_argument("--save-workload", default=None)
    p.add_argument("--out", default=None, help="metrics JSON")


def bench_config(args) -> BenchConfig:
    """The command line's BenchConfig (see add_bench_args); its other plain flags become the context."""
    workload = workload_spec(vars(args))
    if args.prefill_ms_per_token is not None:
        workload = replace(workload, prefill_ms_per_token=args.prefill_ms_per_token)
    return BenchConfig(
        url=args.url,
        workload=workload,
        model=args.model,
        api_key=args.api_key,
        unloaded_tpot_ms=args.unloaded_tpot_ms,
        workload_file=args.workload_file,
        send_slo=not args.no_slo,
        ttft=not args.no_ttft and args.protocol != "paper",
        save_workload=args.save_workload,
        out=args.out,
        context={k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))},
    )


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


# The workload flags (add_workload_args) and the WorkloadSpec fields they set.
WORKLOAD_FLAGS = {
    "rate": "rate",
    "num_requests": "num_requests",
    "duration": "duration_s",
    "arrival": "arrival",
    "cv": "cv",
    "pieces": "pieces",
    "urgent_share": "urgent_share",
    "output_tokens": "output_tokens",
    "slo_scale": "slo_scale",
    "seed": "seed",
}


def workload_spec(flags: Mapping[str, Any]) -> WorkloadSpec:
    """The workload that flags name: the command line's (`vars(args)`) or a bench result's "args".
    The WorkloadSpec fields without a flag (mix, SLO multiples, ...) are in "args" only if they were
    not the defaults."""
    spec = {name: flags[flag] for flag, name in WORKLOAD_FLAGS.items()}
    unflagged = {k: _copy(flags[k]) for k in _unflagged_fields() if flags.get(k) is not None}
    return WorkloadSpec(**spec, **unflagged)


def workload_flags(spec: WorkloadSpec) -> dict:
    """workload_spec()'s inverse: the flags that name `spec`."""
    flags = {flag: getattr(spec, name) for flag, name in WORKLOAD_FLAGS.items()}
    default = WorkloadSpec()
    for name in _unflagged_fields():
        if getattr(spec, name) != getattr(default, name):
            flags[name] = _copy(getattr(spec, name))
    return flags


def _unflagged_fields() -> list[str]:
    return [f.name for f in fields(WorkloadSpec) if f.name not in WORKLOAD_FLAGS.values()]


def _copy(value):
    return dict(value) if isinstance(value, Mapping) else value


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
    if result.get("prefix_cache_hit_rate") is not None:
        print(f"prefix cache hit rate: {result['prefix_cache_hit_rate']:.1%} of prompt tokens")
