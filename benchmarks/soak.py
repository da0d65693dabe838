"""Soak: thousands of mixed requests against a local server, watching for leaks and 5xx.

Starts `adaserve serve` on SmolLM2 (n-gram chain:4 speculation, an API key, a small pending limit)
and sends a seeded mix: plain and streaming completions and chats, streams dropped mid-way, blocking
requests abandoned by a client timeout, malformed bodies, and bursts past --max-pending-requests
(429s). A greedy probe prompt recurs and must give the same text every time. Every 2 s it samples
the server's resident memory, threads and open file descriptors (/proc) and KV blocks in use
(/metrics). At the end, with the server idle, no KV block may be held.

Usage: python benchmarks/soak.py [--requests 5000] [--out benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adaserve.bench.server_process import free_port, wait_healthy
from adaserve.kernels import cpu_flags

API_KEY = "sk-soak"
MODEL = "smollm2-135m"
WORDS = "the a river model token cache server quick brown fox jumps over lazy dog code python function".split()
PROBE = {"prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0}
BAD_BODIES = [  # (body, expect 4xx); bytes are sent raw
    (b"{not json", None),
    ({"prompt": "hi", "temperature": -1}, None),
    ({"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {"schema": 7}}}, None),
    ({"prompt": "hi", "logit_bias": {"x": 1}}, None),
    ({"prompt": "hi " * 9000}, None),  # past the context (8,192 tokens)
    ({"prompt": [10**9]}, None),
    ({"model": "gpt-4", "prompt": "hi"}, None),
    ({"prompt": "hi", "max_tokens": 0}, None),
    ({"messages": []}, "chat"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "chat"),
]


@dataclass
class Tally:
    status_counts: dict[str, int] = field(default_factory=dict)
    probe_texts: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    num_sent: int = 0
    num_done: int = 0

    def count(self, key: str | int) -> None:
        self.status_counts[str(key)] = self.status_counts.get(str(key), 0) + 1
        self.num_done += 1


def _prompt(rng: random.Random) -> str:
    """Mostly short prompts; a few long (up to ~1,500 tokens)."""
    num_words = rng.randint(3, 60) if rng.random() < 0.7 else rng.randint(60, 400)
    num_words = rng.randint(400, 1200) if rng.random() < 0.03 else num_words
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def _sampling(rng: random.Random) -> dict:
    greedy = rng.random() < 0.5
    return {"max_tokens": rng.randint(1, 24), "temperature": 0 if greedy else 0.8, "seed": rng.randint(0, 99)}


async def _backoff(response: httpx.Response) -> None:
    if response.status_code == 429:  # a well-behaved client waits as told
        await asyncio.sleep(float(response.headers.get("retry-after", 1)))


async def _stream(
    client: httpx.AsyncClient, path: str, body: dict, tally: Tally, drop_after: int | None, backoff: bool = True
) -> None:
    async with client.stream("POST", path, json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            tally.count(r.status_code)
            if backoff:
                await _backoff(r)
            return
        num_events, done = 0, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            if "error" in json.loads(line[6:]):
                tally.errors.append(line[:300])
                tally.count("stream_error")
                return
            num_events += 1
            if drop_after is not None and num_events >= drop_after:
                tally.count("disconnected")
                return
        tally.count(200 if done else "stream_cut")


async def _one(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    kind = rng.random()
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    prompt = _prompt(rng)
    body = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    body |= _sampling(rng)
    tally.num_sent += 1
    try:
        if kind < 0.05:
            r = await client.post("/v1/completions", json=PROBE)
            tally.count(r.status_code)
            await _backoff(r)
            if r.status_code == 200:
                tally.probe_texts.add(r.json()["choices"][0]["text"])
        elif kind < 0.40:
            r = await client.post(path, json=body)
            tally.count(r.status_code)
            await _backoff(r)
        elif kind < 0.70:
            await _stream(client, path, body | {"stream_options": {"include_usage": True}}, tally, None)
        elif kind < 0.80:
            await _stream(client, path, body | {"max_tokens": 64, "ignore_eos": True}, tally, rng.randint(1, 8))
        elif kind < 0.85:  # a blocking request whose client gives up: the server must abort it
            timeout = httpx.Timeout(rng.uniform(0.05, 0.5))
            r = await client.post(path, json=body | {"max_tokens": 64, "ignore_eos": True}, timeout=timeout)
            tally.count(r.status_code)  # (it finished, or was refused, before the timeout)
        else:
            await _bad(client, rng, tally)
    except httpx.TimeoutException:
        tally.count("disconnected")
    except httpx.HTTPError as e:
        tally.errors.append(f"{type(e).__name__}: {e}")
        tally.count("transport_error")


async def _bad(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    if rng.random() < 0.15:  # a wrong key
        r = await client.post("/v1/completions", json={"prompt": "hi"}, headers={"authorization": "Bearer nope"})
        tally.count(r.status_code)
        return
    body, route = rng.choice(BAD_BODIES)
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    if isinstance(body, bytes):
        r = await client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = await client.post(path, json=body)
    tally.count(r.status_code)


async def _burst(client: httpx.AsyncClient, size: int, tally: Tally) -> None:
    """`size` streams at once: past the pending limit some are refused with 429."""
    body = {"prompt": "Count to ten:", "max_tokens": 16, "temperature": 0}
    tally.num_sent += size
    results = await asyncio.gather(
        *(_stream(client, "/v1/completions", body, tally, None, backoff=False) for _ in range(size)),
        return_exceptions=True,
    )
    for res in results:
        if isinstance(res, Exception):
            tally.errors.append(repr(res))
            tally.count("transport_error")


def _proc_sample(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
    }


async def _kv_blocks(client: httpx.AsyncClient) -> dict[str, float]:
    """KV blocks in use, requests running and waiting, preemptions: from /metrics."""
    text = (await client.get("/metrics")).text
    wanted = ("adaserve_kv_blocks_used", "adaserve_draft_kv_blocks_used", "adaserve_running_requests")
    wanted += ("adaserve_waiting_requests", "adaserve_preemptions_total")
    samples = (s for family in text_string_to_metric_families(text) for s in family.samples)
    return {s.name: s.value for s in samples if s.name in wanted}


async def _sampler(client: httpx.AsyncClient, pid: int, tally: Tally, samples: list, stop: asyncio.Event) -> None:
    start = time.perf_counter()
    while not stop.is_set():
        kv = await _kv_blocks(client)
        samples.append({"t": round(time.perf_counter() - start, 1), "done": tally.num_done, **_proc_sample(pid), **kv})
        try:
            await asyncio.wait_for(stop.wait(), timeout=2.0)
        except TimeoutError:
            pass


async def run_soak(url: str, pid: int, args) -> dict:
    rng = random.Random(args.seed)
    tally, samples = Tally(), []
    headers = {"authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=args.burst_size + args.concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        for stream in (False, True):  # warm-up (lazily made threads and buffers), before the baseline
            await client.post("/v1/completions", json=PROBE | {"stream": stream})
        structured = {"response_format": {"type": "json_object"}, "max_tokens": 8}  # (grammars compile in a thread)
        await client.post("/v1/completions", json=PROBE | structured)
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sampler(client, pid, tally, samples, stop))
        start = time.perf_counter()

        async def worker(worker_rng: random.Random) -> None:
            while tally.num_sent < args.requests:
                if worker_rng.random() < args.burst_every:
                    await _burst(client, args.burst_size, tally)
                else:
                    await _one(client, worker_rng, tally)

        await asyncio.gather(*(worker(random.Random(rng.random())) for _ in range(args.concurrency)))
        seconds = time.perf_counter() - start
        await _wait_idle(client)
        await asyncio.sleep(2.5)  # one more sample, idle
        stop.set()
        await sampler
    await asyncio.sleep(1.0)  # (the load's connections are closed: count what the server still holds)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        idle = await _kv_blocks(client)
    samples.append({"t": samples[-1]["t"] + 3, "done": tally.num_done, **_proc_sample(pid), **idle})
    return _summary(tally, samples, seconds, args)


async def _wait_idle(client: httpx.AsyncClient, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while True:
        kv = await _kv_blocks(client)
        busy = kv.get("adaserve_running_requests", 0) + kv.get("adaserve_waiting_requests", 0)
        if not busy or time.time() > deadline:
            return
        await asyncio.sleep(0.5)


def _growth_pct(before: float, after: float) -> float:
    return round(100.0 * (after - before) / before, 2)


def _summary(tally: Tally, samples: list, seconds: float, args) -> dict:
    half = next(s for s in samples if s["done"] >= tally.num_done / 2)
    first = samples[0]  # idle, before the load
    last = samples[-1]
    num_5xx = sum(n for k, n in tally.status_counts.items() if k.isdigit() and int(k) >= 500)
    num_5xx += tally.status_counts.get("stream_error", 0)
    return {
        "requests": tally.num_done,
        "seconds": round(seconds, 1),
        "status_counts": dict(sorted(tally.status_counts.items())),
        "num_5xx": num_5xx,
        "rss_mb": [round(s["rss_mb"], 1) for s in samples],
        "rss_mb_at_half": round(half["rss_mb"], 1),
        "rss_mb_final": round(last["rss_mb"], 1),
        "rss_growth_last_half_pct": _growth_pct(half["rss_mb"], last["rss_mb"]),
        "rss_max_growth_last_half_pct": _growth_pct(
            half["rss_mb"], max(s["rss_mb"] for s in samples[-len(samples) // 2 :])
        ),
        "kv_blocks_leaked": int(last.get("adaserve_kv_blocks_used", 0) + last.get("adaserve_draft_kv_blocks_used", 0)),
        "fds_start_end": [first["fds"], last["fds"]],
        "threads_start_end": [first["threads"], last["threads"]],
        "fds_growth": last["fds"] - first["fds"],  # both idle
        "threads_growth": last["threads"] - first["threads"],
        "preemptions": last.get("adaserve_preemptions_total"),
        "probe_texts_distinct": len(tally.probe_texts),
        "errors": tally.errors[:20],
        "samples": samples,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "cpu_flags": cpu_flags(),
    }


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = summary["samples"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax1.plot([s["done"] for s in samples], [s["rss_mb"] for s in samples])
    ax1.set_ylabel("resident memory (MB)")
    ax2.plot([s["done"] for s in samples], [s.get("adaserve_kv_blocks_used", 0) for s in samples])
    ax2.set_ylabel("KV blocks in use")
    ax2.set_xlabel("requests done")
    fig.suptitle(f"soak: {summary['requests']} requests, {summary['num_5xx']} 5xx")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--max-pending-requests", type=int, default=24)
    ap.add_argument("--burst-size", type=int, default=40, help="streams sent at once in a burst")
    ap.add_argument("--burst-every", type=float, default=0.01, help="chance per request that a burst goes instead")
    ap.add_argument("--kv-cache-memory", default="64MiB", help="small, so long prompts preempt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/soak.json")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "adaserve.cli", "serve", "--model", MODEL, "--draft", "ngram"]
    command += ["--policy", "chain:4", "--api-key", API_KEY, "--port", str(port), "--log-level", "warning"]
    command += ["--max-pending-requests", str(args.max_pending_requests), "--kv-cache-memory", args.kv_cache_memory]
    server = subprocess.Popen(command)
    try:
        wait_healthy(url, server, timeout_s=600)
        summary = asyncio.run(run_soak(url, server.pid, args))
        summary["server_alive_after"] = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=120)
    summary["server_exit_code"] = server.returncode
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    _plot(summary, out.with_suffix(".png"))
    brief = {k: v for k, v in summary.items() if k not in ("samples", "rss_mb", "config", "cpu_flags", "errors")}
    print(json.dumps(brief, indent=1))


if __name__ == "__main__":
    main()
