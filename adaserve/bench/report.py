"""Benchmark metrics from client-side records: attainment and goodput per category and overall
(adaserve.slo), TTFT/TPOT mean, median, p90, p99, errors. Plain Python."""

from __future__ import annotations

import statistics

from adaserve.bench.client import BenchRecord
from adaserve.slo import summarize_by_category


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default). q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> dict | None:
    if not seconds:
        return None
    ms = [s * 1000.0 for s in seconds]
    return {
        "mean": statistics.fmean(ms),
        "median": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
    }


def bench_report(records: list[BenchRecord], wall_time_s: float) -> dict:
    timings = [r.timing for r in records]
    out = {}
    for category, s in summarize_by_category(timings, wall_time_s).items():
        group = [t for t, r in zip(timings, records) if category == "all" or r.category == category]
        out[category] = {
            "num_requests": s.num_requests,
            "num_attained": s.num_attained,
            "attainment": s.attainment,  # joint: TTFT and TPOT
            "attainment_tpot": s.attainment_tpot,
            "attainment_ttft": s.attainment_ttft,
            "violations": s.num_requests - s.num_attained,
            "goodput_tokens_per_s": s.goodput,
            "goodput_tpot_tokens_per_s": s.goodput_tpot,
            "throughput_tokens_per_s": s.throughput,
            "ttft_ms": latency_stats([t.ttft_s for t in group if t.ttft_s is not None]),
            "tpot_ms": latency_stats([t.tpot_s for t in group if t.tpot_s is not None]),
            "num_errors": sum(1 for r in records if r.error and (category == "all" or r.category == category)),
        }
    return {"wall_time_s": wall_time_s, "categories": out}
