"""Simulator workloads in token counts, from the same sources as `adaserve bench`:
a bench result JSON    the exact arrivals, categories, SLOs and prompt lengths (from the server's
                       usage) of a measured run: what validation replays;
a workload file        `adaserve bench --save-workload` JSON lines, prompts tokenized with a
                       tokenizer (or ~4 characters per token without one);
a WorkloadSpec         generated like `adaserve bench` does, from the same datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adaserve.bench.client import BenchRequest
from adaserve.bench.workload import estimated_tokens
from adaserve.slo import SLO


@dataclass(frozen=True)
class SimRequest:
    arrival_s: float
    category: str
    num_prompt_tokens: int
    max_tokens: int
    slo: SLO
    prompt_key: str = ""  # which prompt (BenchRequest.prompt_key): acceptance may be recorded per prompt


def from_bench_result(path: Path, name_prompts: bool = False) -> list[SimRequest]:
    """name_prompts: name each request's prompt even if the result's records do not (results written
    before they did): rebuild the workload from the result's arguments (needs the datasets)."""
    result = json.loads(Path(path).read_text())
    records = result["records"]
    if not records:
        return []
    # Arrivals as offsets from the start of the run, as the benchmark sent them: its wall time runs
    # from that start (before the first arrival) to the end, and goodput is divided by it.
    start = min(r["arrival_time"] for r in records)
    ends = [r["chunk_times"][-1] for r in records if r.get("chunk_times")]
    if "wall_time_s" in result and ends:
        start = min(start, max(ends) - result["wall_time_s"])
    max_tokens = int(result["args"]["output_tokens"])
    keys = [r.get("prompt_key", "") for r in records]
    if name_prompts and not all(keys):
        from adaserve.bench.run import sent_requests

        keys = [q.prompt_key for q in sent_requests(result)]
    out = []
    for r, key in zip(records, keys):
        usage = r.get("server_usage") or {}
        if "prompt_tokens" not in usage:
            raise ValueError(
                f"{path}: a record has no server usage (prompt length unknown); it failed: {r.get('error')}"
            )
        out.append(
            SimRequest(
                r["arrival_time"] - start, r["category"], int(usage["prompt_tokens"]), max_tokens, SLO(**r["slo"]), key
            )
        )
    return sorted(out, key=lambda x: x.arrival_s)


def prompt_token_counter(tokenizer=None):
    """messages -> prompt tokens: the tokenizer's chat template, or a characters/4 estimate."""
    if tokenizer is None:
        return lambda messages: estimated_tokens("".join(m["content"] for m in messages))
    return lambda messages: len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def from_bench_requests(requests: list[BenchRequest], tokenizer=None) -> list[SimRequest]:
    count = prompt_token_counter(tokenizer)
    return [SimRequest(r.arrival_s, r.category, count(r.messages), r.max_tokens, r.slo, r.prompt_key) for r in requests]
