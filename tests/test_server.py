"""The real server on loopback (SmolLM2 + a 3-layer self draft, adaserve policy), driven by the
official openai client and raw HTTP: completions and chat, streaming and not, SLOs, usage extras,
every error status, disconnects freeing KV blocks, and 32 concurrent streams."""

import asyncio
import json
import time

import httpx
import openai
import pytest

from adaserve.engine.async_engine import AsyncEngine
from adaserve.engine.core import EngineCore
from adaserve.server.app import ServerConfig, create_app
from tests.factories import LiveServer
from tests.server_fixtures import MODEL, wait_idle

API_KEY = "sk-test"


def test_completion_stream_equals_non_stream_with_slo(client, engine):
    kwargs = dict(
        model=MODEL,
        prompt="def fibonacci(n):",
        max_tokens=24,
        temperature=0,
        extra_body={"slo": {"tpot_ms": 400, "ttft_ms": 10000}},
    )
    whole = client.completions.create(**kwargs)
    assert whole.choices[0].finish_reason in ("length", "stop") and whole.usage.completion_tokens > 0
    extras = whole.usage.model_extra
    assert extras["slo"] == {"tpot_ms": 400, "ttft_ms": 10000} and isinstance(extras["slo_attained"], bool)
    assert extras["ttft_ms"] > 0 and extras["spec_verifications"] > 0
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    wait_idle(engine)


def test_chat_stream_equals_non_stream_with_slo_class(client):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=20,
        temperature=0,
        extra_body={"slo_class": "chat"},
    )
    whole = client.chat.completions.create(**kwargs)
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.model_extra["slo_class"] == "chat" and whole.usage.model_extra["slo"]["tpot_ms"] == 500.0
    batch = client.chat.completions.create(**{**kwargs, "extra_body": {"slo_class": "batch"}}).usage
    assert batch.model_extra["slo"]["ttft_ms"] == 1000.0 + 3 * 10.0 * batch.prompt_tokens  # grows with the prompt
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_slo_by_header_and_stop_strings(server):
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 30, "temperature": 0, "stop": [" 9"]}
    r = httpx.post(server.url + "/v1/completions", json=body, headers={"x-slo-tpot-ms": "250"}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["usage"]["slo"]["tpot_ms"] == 250.0 and " 9" not in out["choices"][0]["text"]
    assert out["choices"][0]["finish_reason"] == "stop"
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        text = "".join(
            json.loads(line[6:])["choices"][0]["text"]
            for line in s.iter_lines()
            if line.startswith("data: {") and json.loads(line[6:])["choices"]
        )
    assert text == out["choices"][0]["text"]


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"model": MODEL, "prompt": "hi", "temperature": -1}, 400, "temperature"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": ""}, 400, "prompt"),
        ({"model": MODEL, "prompt": "hi", "n": 65}, 400, "n"),
        ({"prompt": "hi", "n": 3, "best_of": 2}, 400, "best_of must be >= n"),
        ({"prompt": "hi", "best_of": 2, "stream": True}, 400, "cannot be streamed"),
        ({"model": MODEL, "prompt": "hi", "slo": {"tpot_ms": -5}}, 400, "tpot_ms"),
        ({"model": MODEL, "prompt": "hi", "slo": {"tpot": 5}}, 400, "slo"),
        ({"model": MODEL, "prompt": "hi", "slo_class": "gold"}, 400, "unknown slo_class"),
        ({"model": MODEL, "prompt": "hi " * 2600}, 400, "maximum context length is 2560"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 5000}, 400, "you requested"),
        ({"model": MODEL, "prompt": [10**9]}, 400, "token ids"),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "does not exist"),
        ({"prompt": "hi", "stop": [""]}, 400, "stop"),
        # Nothing silently ignored: an unimplemented field is a 400 that names it.
        ({"prompt": "hi", "logit_bias": {"not-a-token": 5}}, 400, "logit_bias keys must be token ids"),
        ({"prompt": "hi", "logit_bias": {"99999999": 5}}, 400, "logit_bias token ids must be in"),
        ({"prompt": "hi", "logit_bias": {"50": 101}}, 400, "logit_bias values"),
        ({"prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty"),
        ({"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
        ({"prompt": "hi", "tool_choice": "auto"}, 400, "unsupported field 'tool_choice'"),
    ],
)
def test_errors_use_the_openai_schema(server, body, status, needle):
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] or needle == err.get("param"), err
    assert err["code"] == status and err["type"]


def test_invalid_json_and_chat_errors(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400
    r = httpx.post(
        server.url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert r.status_code == 400
    tool_turn = {"role": "assistant", "content": "x", "tool_calls": []}
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": [tool_turn]})
    assert r.status_code == 400 and "messages.0.tool_calls" in r.json()["error"]["message"]
    ok = {"model": MODEL, "max_tokens": 2, "response_format": {"type": "text"}, "logit_bias": {}, "user": "u1"}
    r = httpx.post(server.url + "/v1/chat/completions", json={**ok, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text  # the no-op values of those fields are fine
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # still alive


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", extra_body={"slo": {"ttft_ms": 0}})


def test_api_key(engine):
    live = LiveServer(create_app(engine, ServerConfig(MODEL, api_key=API_KEY)))
    try:
        r = httpx.post(live.url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        bad = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0)
        assert [m.id for m in good.models.list()] == [MODEL]
        assert httpx.get(live.url + "/health").status_code == 200  # health needs no key
    finally:
        live.stop()


def test_overload_is_429_with_retry_after(server, engine):
    engine.max_pending_requests = 1
    try:
        with httpx.stream(
            "POST",
            server.url + "/v1/completions",
            timeout=60,
            json={"model": MODEL, "prompt": "Tell a story.", "max_tokens": 1000, "stream": True, "ignore_eos": True},
        ) as s:
            # Hold the line iterator: one dropped unfinished is closed when the garbage collector
            # gets to it, and httpcore then closes the connection (the server aborts the stream).
            lines = s.iter_lines()
            next(lines)
            r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "hi"})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
    finally:
        engine.max_pending_requests = 64
    wait_idle(engine)


def test_disconnect_mid_stream_frees_blocks(server, engine):
    body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as s:
        lines = s.iter_lines()
        for _ in range(3):
            next(lines)
        assert engine.engine.kv.num_free_blocks < engine.engine.kv.pool.num_blocks
    wait_idle(engine, timeout=5.0)  # aborted and freed: 2000 tokens would take far longer than 5 s


def test_32_concurrent_streams_finish(server, engine):
    async def one(client, i):
        stream = await client.completions.create(
            model=MODEL,
            prompt=f"Count to {i}:",
            max_tokens=12,
            temperature=0.7,
            seed=i,
            stream=True,
            extra_body={"slo_class": "coding" if i % 2 else "chat"},
        )
        reasons = [c.choices[0].finish_reason async for c in stream if c.choices]
        return reasons[-1]

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
        return await asyncio.gather(*(one(client, i) for i in range(32)))

    reasons = asyncio.run(main())
    assert len(reasons) == 32 and all(r in ("length", "stop") for r in reasons)
    wait_idle(engine)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'adaserve_slo_attainment{slo_class="coding"}' in metrics
    assert "adaserve_ttft_seconds_bucket" in metrics and "adaserve_kv_cache_usage" in metrics


def test_short_end_to_end_bench(server, engine):
    from adaserve.bench.client import run_load
    from adaserve.bench.report import bench_report
    from adaserve.bench.workload import WorkloadSpec, build_workload

    prompts = {"coding": ["def add(a, b):"], "chat": ["Hi!"], "summarization": ["Summarize: cats sleep a lot."]}
    spec = WorkloadSpec(rate=4.0, num_requests=8, output_tokens=10, seed=0)
    requests = build_workload(spec, unloaded_tpot_ms=200.0, prompts=prompts)
    start = time.perf_counter()
    records = asyncio.run(run_load(server.url, MODEL, requests, progress=False))
    report = bench_report(records, time.perf_counter() - start)
    assert not any(r.error for r in records)
    assert all(r.num_output_tokens == 10 and r.first_token_time >= r.arrival_time for r in records)
    # The report's attainment and goodput, recomputed from the raw timestamps by the definitions.
    wall = time.perf_counter() - start
    met = [
        1000 * (r.chunk_times[-1] - r.first_token_time) / (r.num_output_tokens - 1) <= r.slo.tpot_ms
        and (r.slo.ttft_ms is None or 1000 * (r.first_token_time - r.arrival_time) <= r.slo.ttft_ms)
        for r in records
    ]
    everything = report["categories"]["all"]
    assert everything["num_requests"] == 8
    assert everything["attainment"] == pytest.approx(sum(met) / 8)
    assert everything["goodput_tokens_per_s"] == pytest.approx(10 * sum(met) / report["wall_time_s"])
    assert report["wall_time_s"] <= wall
    # The server judged the same SLOs the client sent.
    assert all(r.server_usage["slo"]["tpot_ms"] == r.slo.tpot_ms for r in records)
    wait_idle(engine)


def test_bench_cli_writes_metrics_json(server, engine, tmp_path):
    from adaserve.cli import main

    out = tmp_path / "bench.json"
    main(
        [
            "bench",
            "--url",
            server.url,
            "--num-requests",
            "3",
            "--rate",
            "5",
            "--output-tokens",
            "6",
            "--unloaded-tpot-ms",
            "100",
            "--out",
            str(out),
            "--save-workload",
            str(tmp_path / "w.jsonl"),
        ]
    )
    result = json.loads(out.read_text())
    assert result["categories"]["all"]["num_requests"] == 3 and len(result["records"]) == 3
    assert result["args"]["rate"] == 5.0 and (tmp_path / "w.jsonl").exists()
    assert 0.0 <= result["prefix_cache_hit_rate"] <= 1.0  # read off the server's /metrics
    wait_idle(engine)


def test_mixed_slos_end_to_end_refusal_and_demotion(server, engine):
    """A reachable SLO is met; an unreachable one (a 1 us TTFT) is refused at once with slo_policy
    reject (429 in the OpenAI error schema), or else served best-effort to the end; /metrics counts
    both per class."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    unreachable = {"slo": {"tpot_ms": 500.0, "ttft_ms": 0.001}, "slo_class": "hopeless"}
    with pytest.raises(openai.RateLimitError) as refused:
        client.completions.create(
            model=MODEL, prompt="Hello", max_tokens=8, extra_body={**unreachable, "slo_policy": "reject"}
        )
    error = refused.value.body
    assert error["type"] == "rate_limit_error" and "SLO" in error["message"] and error["param"] == "slo"
    served = client.completions.create(model=MODEL, prompt="Hello", max_tokens=8, extra_body=unreachable)
    usage = served.usage.model_extra  # adaserve's fields beside OpenAI's
    assert served.usage.completion_tokens == 8 and usage["slo_demoted"] and not usage["slo_attained"]
    reachable = {"slo": {"tpot_ms": 60_000.0, "ttft_ms": 60_000.0}, "slo_class": "relaxed"}
    ok = client.completions.create(model=MODEL, prompt="Hello", max_tokens=8, extra_body=reachable)
    assert ok.usage.model_extra["slo_attained"] and not ok.usage.model_extra["slo_demoted"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'adaserve_slo_refused_requests_total{slo_class="hopeless"} 1.0' in metrics
    assert 'adaserve_slo_demoted_requests_total{slo_class="hopeless"} 1.0' in metrics
    assert 'adaserve_slo_demoted_requests_total{slo_class="relaxed"}' not in metrics
    wait_idle(engine)


def test_the_serve_command_builds_a_working_server(smollm2_dir):
    """What `adaserve serve` starts, from its command line (its own wiring had no test)."""
    from fastapi.testclient import TestClient

    from adaserve.cli import build_parser, build_server

    args = build_parser().parse_args(
        ["serve", "--model", str(smollm2_dir), "--draft", "ngram", "--policy", "chain:2", "--slo-class", "chat=tpot:2s"]
    )
    engine, app = build_server(args)
    try:
        client = TestClient(app)
        body = {"prompt": "Hello", "max_tokens": 4, "slo_class": "chat"}
        response = client.post("/v1/completions", json=body).json()
        assert response["usage"]["completion_tokens"] == 4 and response["usage"]["slo"]["tpot_ms"] == 2000.0
        assert client.get("/v1/models").json()["data"][0]["id"] == str(smollm2_dir)
        refused = client.post("/v1/completions", json={**body, "slo_policy": "reject"})  # no planner: never silent
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "slo_policy"
    finally:
        engine.shutdown()


def test_an_engine_that_fails_to_build_raises_from_start():
    def build() -> EngineCore:
        raise ValueError("no such model")

    eng = AsyncEngine(build)
    with pytest.raises(RuntimeError, match="building the engine failed") as info:
        eng.start()
    assert isinstance(info.value.__cause__, ValueError) and not eng.is_alive
