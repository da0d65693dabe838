"""OpenAI fields beyond the basics, through the real server and the official openai client: prefix
caching, logprobs, penalties and logit_bias, n and best_of."""

import json

import httpx
import pytest

from tests.server_fixtures import MODEL, wait_idle


def _metric_value(url: str, name: str) -> float:
    lines = [x for x in httpx.get(url + "/metrics").text.splitlines() if x.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0  # (a labelled series appears once observed)


def test_a_repeated_chat_history_is_served_from_the_prefix_cache(client, server, engine):
    history = [{"role": "system", "content": "You answer questions about Python briefly. " * 8}]
    history.append({"role": "user", "content": "What is a list?"})
    hits = _metric_value(server.url, "adaserve_prefix_cache_hits_total")
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content}]
    history += [{"role": "user", "content": "And a tuple?"}]
    second = client.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0)
    num_full_blocks = first.usage.prompt_tokens // 16 * 16  # (16-token blocks)
    assert _metric_value(server.url, "adaserve_prefix_cache_hits_total") - hits >= num_full_blocks
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens >= num_full_blocks
    assert 0 < _metric_value(server.url, "adaserve_prefix_cache_hit_rate") <= 1
    wait_idle(engine)


def test_a_seed_reproduces_its_sample_through_the_openai_client(client, engine):
    kwargs = dict(model=MODEL, prompt="My favourite animal is", max_tokens=16, temperature=1.0)
    whole = [client.completions.create(**kwargs, seed=seed).choices[0].text for seed in (5, 5, 6)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, seed=5, stream=True))
    assert whole[0] == whole[1] == streamed and whole[2] != whole[0]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("stop", "stop_reason"), [([" 6", "x"], " 6"), (None, None)])
def test_stop_reason_is_the_stop_string_it_ended_on(client, stream, stop, stop_reason):
    kwargs = dict(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=stop)
    if stream:
        finals = [c.choices[0] for c in client.completions.create(**kwargs, stream=True) if c.choices[0].finish_reason]
    else:
        finals = client.completions.create(**kwargs).choices
    assert [(c.finish_reason, c.stop_reason) for c in finals] == [("stop" if stop else "length", stop_reason)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_through_the_openai_client(client, engine, stream):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=10)
    kwargs |= dict(temperature=0, logprobs=True, top_logprobs=2, stream=stream)
    if stream:
        content, text = [], ""
        for chunk in client.chat.completions.create(**kwargs):
            if chunk.choices and chunk.choices[0].logprobs:
                content += chunk.choices[0].logprobs.content
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        content, text = choice.logprobs.content, choice.message.content
    assert content and "".join(c.token for c in content).startswith(text[:5])
    for c in content:
        assert c.logprob <= 0 and len(c.top_logprobs) == 2 and c.bytes == list(c.token.encode())
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-5)  # greedy: the best
    wait_idle(engine)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_logprobs_penalties_and_bias(client, engine, stream):
    kwargs = dict(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, logprobs=1)
    plain = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True)) if stream else [plain]
    tokens = [t for c in chunks for t in (c.choices[0].logprobs.tokens if c.choices and c.choices[0].logprobs else [])]
    assert "".join(tokens).startswith(plain.choices[0].text) and len(tokens) == plain.usage.completion_tokens
    first = plain.choices[0].logprobs
    assert first.text_offset[0] == 0 and len(first.top_logprobs[0]) == 1
    banned = engine.engine.tokenizer.encode(" 5", add_special_tokens=False)[0]
    biased = client.completions.create(**kwargs, logit_bias={str(banned): -100}, frequency_penalty=1.0)
    assert " 5" not in biased.choices[0].text and biased.choices[0].text != plain.choices[0].text
    wait_idle(engine)


def test_n_sequences_share_the_prompt_kv_and_count_as_one_request(client, server, engine):
    prompt = "Write one sentence about the sea, the sky and the mountains, then another about rivers."
    hits = _metric_value(server.url, "adaserve_prefix_cache_hits_total")
    requests = _metric_value(server.url, 'adaserve_requests_total{finish_reason="length",slo_class="chat"}')
    out = client.completions.create(
        model=MODEL, prompt=prompt, n=3, max_tokens=12, temperature=1.0, seed=11, extra_body={"ignore_eos": True}
    )
    out = out.model_dump()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in out["choices"])
    assert len({c["text"] for c in out["choices"]}) > 1  # three samples, not one repeated
    u = out["usage"]
    assert u["completion_tokens"] == 36 and u["total_tokens"] == u["prompt_tokens"] + 36
    assert u["prompt_tokens"] == len(engine.engine.tokenizer.encode(prompt))  # the prompt, once
    # Sequences 1 and 2 found sequence 0's full prompt blocks in the prefix cache.
    full_blocks = u["prompt_tokens"] // engine.engine.kv.block_size * engine.engine.kv.block_size
    assert _metric_value(server.url, "adaserve_prefix_cache_hits_total") - hits >= 2 * full_blocks
    classed = client.completions.create(
        model=MODEL, prompt=prompt, n=2, max_tokens=4, extra_body={"slo_class": "chat", "ignore_eos": True}
    )
    assert classed.usage.model_extra["slo_attained"] in (True, False)
    after = _metric_value(server.url, 'adaserve_requests_total{finish_reason="length",slo_class="chat"}')
    assert after - requests == 1  # one API request, attained only if both sequences were
    wait_idle(engine)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_n_greedy_streams_interleave_by_index_and_match_n_1(client, engine, chat):
    kwargs = dict(model=MODEL, max_tokens=10, temperature=0)
    if chat:
        create, kwargs["messages"] = client.chat.completions.create, [{"role": "user", "content": "Name a color."}]
        text_of = lambda c: c.message.content
        delta_of = lambda c: c.delta.content or ""
    else:
        create, kwargs["prompt"] = client.completions.create, "The capital of France is"
        text_of = delta_of = lambda c: c.text
    single = text_of(create(**kwargs).choices[0])
    whole = create(**kwargs, n=2)
    assert [text_of(c) for c in whole.choices] == [single, single]
    texts, usage = {0: "", 1: ""}, None
    for chunk in create(**kwargs, n=2, stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] += delta_of(c)
        usage = chunk.usage or usage
    assert texts == {0: single, 1: single}
    assert usage.completion_tokens == whole.usage.completion_tokens
    wait_idle(engine)


def test_best_of_returns_the_most_likely_of_its_sequences(client, engine):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=3, logprobs=0)
    out = client.completions.create(**kwargs, n=2, best_of=4, extra_body={"ignore_eos": True})
    assert len(out.choices) == 2 and [c.index for c in out.choices] == [0, 1]
    scores = [sum(c.logprobs.token_logprobs) for c in out.choices]
    assert scores[0] >= scores[1]
    assert out.usage.completion_tokens == 4 * 8  # every sequence generated counts
    plain = client.completions.create(**{**kwargs, "logprobs": None}, best_of=2, extra_body={"ignore_eos": True})
    assert plain.choices[0].logprobs is None  # ranked by log-probs the client did not ask for
    wait_idle(engine)


def test_n_stream_dropped_mid_way_aborts_every_sequence(server, engine):
    body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 500, "stream": True, "n": 3}
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "ignore_eos": True}, timeout=60) as s:
        for i, _ in enumerate(s.iter_lines()):
            if i > 6:
                break
    wait_idle(engine)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_response_format_json_schema_and_json_object(client, engine, stream):
    formats = {
        "Describe a person as JSON.": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        'Repeat this JSON: {"ok": true}': {"type": "json_object"},
    }
    for content, response_format in formats.items():
        messages = [{"role": "user", "content": content}]
        kwargs = dict(model=MODEL, messages=messages, max_tokens=250, temperature=0, response_format=response_format)
        if stream:
            chunks = list(client.chat.completions.create(**kwargs, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            text, finish = choice.message.content, choice.finish_reason
        assert finish == "stop", text
        value = json.loads(text)
        assert isinstance(value, dict)
        if response_format["type"] == "json_schema":
            assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    wait_idle(engine)


@pytest.mark.parametrize(
    "extra, check",
    [
        ({"structured_outputs": {"choice": ["alpha", "beta"]}}, lambda t: t in ("alpha", "beta")),
        ({"structured_outputs": {"regex": "[0-9]{4}"}}, lambda t: len(t) == 4 and t.isdigit()),
        ({"structured_outputs": {"json": PERSON}}, lambda t: set(json.loads(t)) == {"name", "age"}),
        ({"guided_choice": ["up", "down"]}, lambda t: t in ("up", "down")),
        ({"guided_regex": "(yes|no)"}, lambda t: t in ("yes", "no")),
    ],
    ids=["choice", "regex", "json", "guided_choice", "guided_regex"],
)
def test_vllm_structured_output_fields(client, engine, extra, check):
    out = client.completions.create(model=MODEL, prompt="Answer:", max_tokens=40, temperature=0.7, extra_body=extra)
    assert out.choices[0].finish_reason == "stop" and check(out.choices[0].text), out.choices[0].text
    wait_idle(engine)


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "invalid regex"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "one constraint"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "one output constraint"),
        ({"guided_json": "{not json"}, "invalid json_schema"),
        ({"structured_outputs": {"grammar": "root ::= nowhere"}}, "invalid grammar"),
    ],
)
def test_bad_structured_output_is_a_400(server, body, needle):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", **body}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] or needle == err["param"], err


def test_prefill_calibration_runs_share_no_cached_prefix(server, engine):
    """`adaserve bench` times prefill on the server with its prefix cache on: a repeat of one prompt
    would be served from the cache, so every run must be a prompt of its own."""
    from adaserve.bench.run import calibrate_prefill

    hits = _metric_value(server.url, "adaserve_prefix_cache_hits_total")
    assert calibrate_prefill(server.url, MODEL, unloaded_tpot_ms=0.0, num_runs=2) > 0
    assert _metric_value(server.url, "adaserve_prefix_cache_hits_total") == hits
    wait_idle(engine)
