"""Injected faults (tests/faults.py) against the real server on SmolLM2: a forward pass that raises,
a tokenizer that raises on one prompt, a commit that raises for one request, and a draft that
proposes garbage. The failing requests end with a 500-class error in the OpenAI schema, every
other request finishes with the output it has without faults, and the engine keeps serving."""

import asyncio
import json

import httpx
import pytest

from adaserve import LLM, SamplingParams
from adaserve.config import EngineConfig
from adaserve.engine.async_engine import AsyncEngine
from adaserve.engine.core import EngineCore
from adaserve.engine.model_runner import ModelRunner
from adaserve.server.app import ServerConfig, create_app
from tests.factories import LiveServer
from tests.faults import FailingRunner, GarbageProposer, PoisonStopChecker, PoisonTokenizer

MODEL = "smollm2"
PROMPTS = [f"Item {i}: a short note about {topic}." for i, topic in enumerate("rivers trees cats code maps".split())]


def _config(smollm2_dir, **overrides) -> EngineConfig:
    base = dict(model=str(smollm2_dir), draft="ngram", spec_policy="chain:4", max_num_seqs=2)
    return EngineConfig(**(base | dict(max_num_batched_tokens=256, max_model_len=512) | overrides))


@pytest.fixture(scope="module")
def live(smollm2_dir):
    runner = FailingRunner(ModelRunner(_config(smollm2_dir)))
    engine = AsyncEngine(EngineCore(_config(smollm2_dir), runner=runner))
    engine.start()
    server = LiveServer(create_app(engine, ServerConfig(MODEL)))
    yield server, engine, runner
    server.stop()
    engine.shutdown()


def _body(prompt: str, **extra) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True, **extra}


async def _send_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))


@pytest.fixture(scope="module")
def reference(live) -> list[str]:
    """Each prompt's greedy text with no fault armed."""
    server, _, _ = live
    return [r.json()["choices"][0]["text"] for r in asyncio.run(_send_all(server.url, [_body(p) for p in PROMPTS]))]


def _assert_internal_error(response: httpx.Response) -> None:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "internal_error" and error["code"] == 500 and "injected fault" in error["message"]


def test_a_failing_forward_pass_fails_only_its_step(live, reference):
    server, engine, runner = live
    runner.arm(4)  # two requests run at a time: the 4th pass carries two, three more wait
    responses = asyncio.run(_send_all(server.url, [_body(p) for p in PROMPTS]))
    assert runner.num_failures == 1
    failed = [r for r in responses if r.status_code != 200]
    assert 1 <= len(failed) <= 2
    for r in failed:
        _assert_internal_error(r)
    for r, expected in zip(responses, reference):
        if r.status_code == 200:
            assert r.json()["choices"][0]["text"] == expected
    again = asyncio.run(_send_all(server.url, [_body(PROMPTS[0])]))[0]  # and it keeps serving
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == reference[0]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert engine.engine.kv.num_free_blocks == engine.engine.kv.pool.num_blocks


def test_a_tokenizer_failing_on_one_prompt_is_a_500_for_it_alone(live, reference):
    server, engine, _ = live
    core = engine.engine
    real = core.tokenizer
    core.tokenizer = PoisonTokenizer(real, poison="POISON")
    try:
        responses = asyncio.run(_send_all(server.url, [_body("POISON pill"), *(_body(p) for p in PROMPTS)]))
    finally:
        core.tokenizer = real
    _assert_internal_error(responses[0])
    assert [r.json()["choices"][0]["text"] for r in responses[1:]] == reference


def test_a_request_failing_mid_decode_gets_an_error_event_and_the_rest_finish(live, reference):
    server, engine, _ = live
    core = engine.engine
    poison_ids = core.tokenize("Poisoned stream:")
    real = core.stop_checker
    core.stop_checker = PoisonStopChecker(real, poison_ids, after=40)
    long_stream = _body("Poisoned stream:", stream=True, max_tokens=200)
    try:  # (it fails while the others run and wait: they must not notice)
        with httpx.stream("POST", server.url + "/v1/completions", json=long_stream, timeout=120) as s:
            others = asyncio.run(_send_all(server.url, [_body(p) for p in PROMPTS]))
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
        blocking = asyncio.run(_send_all(server.url, [_body("Poisoned stream:", max_tokens=60)]))[0]
    finally:
        core.stop_checker = real
    assert "injected fault" in events[-1]["error"]["message"] and events[-1]["error"]["code"] == 500
    _assert_internal_error(blocking)
    assert [r.json()["choices"][0]["text"] for r in others] == reference
    assert core.kv.num_free_blocks == core.kv.pool.num_blocks


def test_a_garbage_draft_never_changes_greedy_output(smollm2_dir):
    plain = LLM(str(smollm2_dir), max_num_batched_tokens=256)
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    expected = [o.token_ids for o in plain.generate(PROMPTS, params)]
    for policy in ("chain:4", "dynamic-tree:12:5:3"):
        config = _config(smollm2_dir, spec_policy=policy, max_num_seqs=8)
        runner = ModelRunner(config)
        runner.proposer = garbage = GarbageProposer(runner.vocab_size, seed=1)
        core = EngineCore(config, runner=runner)
        requests = [core.add_request(p, params) for p in PROMPTS]
        while core.has_unfinished:
            core.step()
        assert [core.pop_finished(r.request_id).output_ids for r in requests] == expected, policy
        assert garbage.num_proposed > 0 and core.spec.stats.totals.num_proposed > 0  # trees were verified
        assert core.kv.num_free_blocks == core.kv.pool.num_blocks
