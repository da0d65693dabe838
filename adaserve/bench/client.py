"""Load generator: replays timed requests against any OpenAI-compatible server over streaming HTTP
and records what each request saw (arrival, first token, every chunk's time and token count).
SLO attainment is judged client-side from these times (adaserve.slo), so servers without SLO
support (vLLM) are measured the same way."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

import httpx

from adaserve.slo import SLO, RequestTiming


@dataclass
class BenchRequest:
    arrival_s: float  # offset from the start of the run
    category: str
    messages: list[dict]  # chat messages
    max_tokens: int
    slo: SLO
    ignore_eos: bool = True

    @property
    def prompt_key(self) -> str:
        """Names the prompt (its messages) in results and acceptance records, without its text."""
        return prompt_key(self.messages)


def prompt_key(messages: list[dict]) -> str:
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BenchRecord:
    category: str
    slo: SLO
    arrival_time: float  # wall clock (time.perf_counter) at which it was sent
    first_token_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    num_output_tokens: int = 0
    error: str | None = None
    server_usage: dict | None = None
    prompt_key: str = ""  # BenchRequest.prompt_key of what was sent

    @property
    def timing(self) -> RequestTiming:
        last = self.chunk_times[-1] if self.chunk_times else None
        return RequestTiming(
            self.arrival_time, self.first_token_time, last, self.num_output_tokens, self.slo, self.category
        )

    def to_dict(self) -> dict:
        return asdict(self)


async def _one(
    client: httpx.AsyncClient, url: str, model: str, req: BenchRequest, send_slo: bool, headers: dict
) -> BenchRecord:
    body = {
        "model": model,
        "messages": req.messages,
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": req.ignore_eos,
    }
    if send_slo:  # an explicit SLO, or the server's class of that name
        body["slo_class"] = req.category
        if req.slo.is_set:
            body["slo"] = {
                k: v for k, v in (("tpot_ms", req.slo.tpot_ms), ("ttft_ms", req.slo.ttft_ms)) if v is not None
            }
    record = BenchRecord(req.category, req.slo, time.perf_counter(), prompt_key=req.prompt_key)
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:300]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                _on_chunk(record, json.loads(line[6:]), time.perf_counter())
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        record.error = f"{type(e).__name__}: {e}"
    return record


def _on_chunk(record: BenchRecord, chunk: dict, now: float) -> None:
    if "error" in chunk:
        record.error = chunk["error"].get("message", "error")
        return
    if chunk.get("usage"):
        record.server_usage = chunk["usage"]
        if not record.slo.is_set and chunk["usage"].get("slo"):  # the SLO the server resolved for the class
            record.slo = SLO(**chunk["usage"]["slo"])
        record.num_output_tokens = chunk["usage"].get("completion_tokens", record.num_output_tokens)
    for choice in chunk.get("choices", []):
        if choice.get("delta", {}).get("content"):
            if record.first_token_time is None:
                record.first_token_time = now
            record.chunk_times.append(now)


async def run_load(
    base_url: str,
    model: str,
    requests: list[BenchRequest],
    send_slo: bool = True,
    api_key: str | None = None,
    progress: bool = True,
    timeout_s: float = 3600.0,
) -> list[BenchRecord]:
    """Send each request at its arrival offset; returns records in request order."""
    from tqdm.auto import tqdm

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    bar = tqdm(total=len(requests), desc="requests", disable=not progress)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()

        async def timed(req: BenchRequest) -> BenchRecord:
            await asyncio.sleep(max(0.0, start + req.arrival_s - time.perf_counter()))
            record = await _one(client, "/v1/chat/completions", model, req, send_slo, headers)
            bar.update(1)
            return record

        records = await asyncio.gather(*(timed(r) for r in requests))
    bar.close()
    return list(records)
