"""KV exhaustion under load: a burst of long prompts that together need twice the KV cache, sent
to the real server at once. Requests are preempted and recomputed, none is lost, greedy outputs
equal those of an engine with ample KV, and /metrics counts the preemptions."""

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adaserve import LLM, SamplingParams
from adaserve.config import EngineConfig
from adaserve.engine.async_engine import AsyncEngine
from adaserve.engine.core import EngineCore
from adaserve.models.loader import read_model_config
from adaserve.server.app import ServerConfig, create_app
from tests.factories import LiveServer

MAX_TOKENS = 40
PROMPTS = [f"Note {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(60)) for i in range(8)]
SPEC = dict(draft="ngram", spec_policy="chain:4", max_num_batched_tokens=256)


def _metric(url: str, name: str) -> float:
    families = text_string_to_metric_families(httpx.get(url + "/metrics").text)
    return next(s.value for f in families for s in f.samples if s.name == name)


async def _burst(url: str) -> list[httpx.Response]:
    body = {"max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=body | {"prompt": p}) for p in PROMPTS))


def test_a_burst_past_the_kv_cache_is_preempted_and_resumed_losslessly(smollm2_dir):
    ample = LLM(str(smollm2_dir), **SPEC)
    expected = [o.text for o in ample.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))]
    per_token = read_model_config(smollm2_dir).kv_bytes_per_token()
    num_tokens_needed = sum(len(ample.engine.tokenize(p)) + MAX_TOKENS for p in PROMPTS)
    small = EngineConfig(model=str(smollm2_dir), kv_cache_memory=num_tokens_needed // 2 * per_token, **SPEC)
    engine = AsyncEngine(EngineCore(small))
    engine.start()
    server = LiveServer(create_app(engine, ServerConfig("smollm2")))
    try:
        responses = asyncio.run(_burst(server.url))
        assert [r.status_code for r in responses] == [200] * len(PROMPTS)
        assert [r.json()["choices"][0]["text"] for r in responses] == expected
        assert _metric(server.url, "adaserve_preemptions_total") == engine.engine.num_preemptions > 0
        assert _metric(server.url, "adaserve_kv_blocks_used") == 0  # all given back
    finally:
        server.stop()
        engine.shutdown()
