"""Prefix caching on a multi-turn chat workload: ShareGPT conversations, each turn resending the
whole conversation so far (its user turns and the model's own greedy answers), against `adaserve
serve` with and without `--no-prefix-caching`, the same conversations one turn at a time.

    python benchmarks/prefix_caching.py [--conversations 8] [--turns 4] [--max-tokens 32] [-- serve flags]

Reports TTFT per turn (streamed, time to the first content token), its median with and without the
cache, the server's prefix hit rate (/metrics), and whether every answer is the same token for
token (greedy: the cache must not change output). Writes benchmarks/results/prefix_caching.json
and .png, with the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from adaserve.bench.datasets import sharegpt_conversations
from adaserve.bench.run import prefix_cache_counts, prefix_hit_rate
from adaserve.bench.server_process import free_port, wait_healthy
from adaserve.kernels import cpu_flags, cpu_model

OUT = Path("benchmarks/results/prefix_caching")


def chat_turn(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed greedy turn: its TTFT, answer text and prompt size."""
    start = time.perf_counter()
    ttft, parts, usage = None, [], None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - start
            parts.append(chunk.choices[0].delta.content)
    return {"ttft_s": ttft, "answer": "".join(parts), "prompt_tokens": usage.prompt_tokens if usage else None}


def run_conversations(url: str, conversations: list[list[str]], max_tokens: int) -> list[dict]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    turns = []
    for c, user_turns in enumerate(conversations):
        messages = []
        for t, text in enumerate(user_turns):
            messages.append({"role": "user", "content": text})
            turn = chat_turn(client, model, messages, max_tokens)
            messages.append({"role": "assistant", "content": turn["answer"]})
            turns.append({"conversation": c, "turn": t, **turn})
    return turns


def serve_and_run(serve_args: list[str], conversations, max_tokens: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "adaserve.cli", "serve", "--port", str(port), "--log-level", "warning", *serve_args]
    print("starting:", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd)
    try:
        wait_healthy(url, server, timeout_s=3600)
        before = prefix_cache_counts(url)
        turns = run_conversations(url, conversations, max_tokens)
        return {"serve_args": serve_args, "turns": turns, "hit_rate": prefix_hit_rate(before, prefix_cache_counts(url))}
    finally:
        server.terminate()
        server.wait(timeout=60)


def summarize(run: dict) -> dict:
    ttfts = [t["ttft_s"] for t in run["turns"] if t["ttft_s"] is not None]
    later = [t["ttft_s"] for t in run["turns"] if t["ttft_s"] is not None and t["turn"] > 0]
    return {
        "ttft_median_s": statistics.median(ttfts),
        "ttft_median_later_turns_s": statistics.median(later) if later else None,
        "prefix_cache_hit_rate": run["hit_rate"],
    }


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        by_turn: dict[int, list[float]] = {}
        for t in run["turns"]:
            if t["ttft_s"] is not None:
                by_turn.setdefault(t["turn"] + 1, []).append(t["ttft_s"])
        xs = sorted(by_turn)
        ax.plot(xs, [statistics.median(by_turn[x]) for x in xs], marker="o", label=name)
    ax.set_xlabel("turn (the whole conversation resent)")
    ax.set_ylabel("median TTFT (s)")
    ax.set_title("Multi-turn ShareGPT chat: prefix caching")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out-dir", default=str(OUT))
    p.add_argument("serve_args", nargs="*", help="more `adaserve serve` flags (after --)")
    args = p.parse_args()
    conversations = sharegpt_conversations(args.turns)[: args.conversations]
    runs = {
        "prefix caching": serve_and_run(args.serve_args, conversations, args.max_tokens),
        "no prefix caching": serve_and_run([*args.serve_args, "--no-prefix-caching"], conversations, args.max_tokens),
    }
    on, off = (summarize(r) for r in runs.values())
    answers = [[t["answer"] for t in r["turns"]] for r in runs.values()]
    result = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "args": vars(args),
        "with_cache": on,
        "without_cache": off,
        "ttft_median_ratio": off["ttft_median_s"] / on["ttft_median_s"],
        "answers_equal": answers[0] == answers[1],
        "runs": runs,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_caching.json").write_text(json.dumps(result, indent=1))
    plot(runs, out / "prefix_caching.png")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
