"""Host overhead of the server's batch-1 decode: client-side TPOT against the forward pass.

Starts `adaserve serve --policy none` (the default pair: the 1.5B GGUF target) with a step log,
streams --num-requests greedy chat completions one at a time, and splits a token's time:

  client_tpot_ms   median over requests of (t_last - t_second) / (chunks - 2), taken by the client
  step_gap_ms      median time between the starts of consecutive decode steps (the engine's pace)
  pass_ms          median target pass of a decode step, forward plus logits (the step log's)
  host_ms          client_tpot_ms - pass_ms: scheduling, sampling, stop checks, detokenization,
                   streaming, the event loop; host_fraction = host_ms / client_tpot_ms

With --py-spy (needs `pip install py-spy`), the engine thread is sampled during the requests and
its samples are split by the deepest adaserve frame: model code (adaserve/models, adaserve/kernels)
against everything else.

    python benchmarks/host_overhead.py [--model qwen2.5-coder-1.5b] [--num-requests 6]
        [--max-tokens 64] [--py-spy] [--out benchmarks/results/host_overhead.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from engine_vs_peers import PY, ROOT, System, start, stop, wait_ready  # (beside this script)

from adaserve.engine.step_log import read_step_log
from adaserve.kernels import cpu_flags, cpu_model

MODEL_DIRS = ("adaserve/models/", "adaserve/kernels/")


def stream_tpot_ms(client: httpx.Client, url: str, model: str, index: int, max_tokens: int) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write Python function number {index}: sort a list."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    times = []
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices")
                if choices and choices[0]["delta"].get("content"):
                    times.append(time.perf_counter())
    # From the second chunk: the first one's gap holds the prefill.
    return (times[-1] - times[1]) / (len(times) - 2) * 1000


def step_times_ms(log_path: Path) -> tuple[float, float]:
    """(median start-to-start gap, median pass) over decode steps of one token and one pass."""
    steps = [s for s in read_step_log(log_path) if len(s.passes) == 1 and s.passes[0].num_tokens == 1]
    starts = [s.time_s for s in steps]
    gaps = [(b - a) * 1000 for a, b in zip(starts, starts[1:]) if b - a < 1.0]  # (not across requests)
    passes = [s.passes[0].forward_ms + s.passes[0].logits_ms for s in steps]
    return statistics.median(gaps), statistics.median(passes)


def engine_thread_split(raw_path: Path) -> dict:
    """py-spy raw samples of the engine thread, split by the deepest adaserve frame."""
    split: collections.Counter = collections.Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if "adaserve/" in f]
        if not any("async_engine.py" in f for f in frames):
            continue  # another thread (the event loop, uvicorn)
        deepest = frames[-1]
        key = "model" if any(d in deepest for d in MODEL_DIRS) else deepest.split(" (")[0]
        split[key] += int(count)
    total = sum(split.values()) or 1
    return {"num_samples": total, "shares": {k: round(v / total, 4) for k, v in split.most_common(12)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--num-requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--port", type=int, default=8313)
    ap.add_argument("--py-spy", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host_overhead.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="host_overhead_"))
    log_path = work / "steps.jsonl"
    cmd = [PY, "-m", "adaserve.cli", "serve", "--model", args.model, "--policy", "none"]
    cmd += ["--port", str(args.port), "--step-log", str(log_path)]
    server = start(System("adaserve:none", cmd), work / "server.log")
    url = f"http://127.0.0.1:{args.port}"
    spy = None
    try:
        model = wait_ready(url, server, timeout_s=900)
        with httpx.Client(timeout=600) as client:
            stream_tpot_ms(client, url, model, -1, 8)  # warm-up
            log_path.write_text("")  # (the log is appended per step: drop the warm-up's steps)
            py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
            if args.py_spy and py_spy:
                spy_cmd = [py_spy, "record", "-p", str(server.pid), "-r", "50", "-f", "raw"]
                spy = subprocess.Popen([*spy_cmd, "--nonblocking", "-o", str(work / "spy.txt")])
            tpots = [stream_tpot_ms(client, url, model, i, args.max_tokens) for i in range(args.num_requests)]
    finally:
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its samples and exits
            spy.wait(60)
        stop(server)
    gap_ms, pass_ms = step_times_ms(log_path)
    client_ms = statistics.median(tpots)
    result = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "model": args.model,
        "num_requests": args.num_requests,
        "max_tokens": args.max_tokens,
        "client_tpot_ms": round(client_ms, 2),
        "client_tpot_ms_per_request": [round(t, 2) for t in tpots],
        "step_gap_ms": round(gap_ms, 2),
        "pass_ms": round(pass_ms, 2),
        "host_ms": round(client_ms - pass_ms, 2),
        "host_fraction": round((client_ms - pass_ms) / client_ms, 4),
    }
    if spy is not None and (work / "spy.txt").exists():
        result["py_spy_engine_thread"] = engine_thread_split(work / "spy.txt")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_flags"}, indent=1))


if __name__ == "__main__":
    main()
