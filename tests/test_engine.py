"""Engine behaviour: sampling params, stops, limits, errors, abort. Tiny random models, fast."""

import pytest
import torch

from adaserve import LLM, SamplingParams
from adaserve.engine.core import PromptTooLongError
from adaserve.engine.sampler import logits_to_probs
from adaserve.request import FinishReason


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(str(tiny_model_dirs["llama"]), block_size=4, max_num_batched_tokens=64)


def test_seeded_sampling_is_reproducible_and_seeds_differ(llm):
    def run(seed):
        return llm.generate(["hello world"], SamplingParams(max_tokens=20, temperature=1.0, seed=seed))[0].token_ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_sampling_with_top_k_1_is_greedy(llm):
    greedy = llm.generate(["a b c"], SamplingParams(max_tokens=16, ignore_eos=True))[0].token_ids
    top1 = llm.generate(["a b c"], SamplingParams(max_tokens=16, temperature=0.8, top_k=1, ignore_eos=True, seed=3))
    assert top1[0].token_ids == greedy


def test_batched_sampling_equals_sampling_alone(llm):
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    alone = llm.generate(["one two"], params)[0].token_ids
    batched = llm.generate(
        ["x", "one two", "y z"], [params.__class__(**{**params.__dict__, "seed": s}) for s in (1, 7, 2)]
    )
    assert batched[1].token_ids == alone


@pytest.mark.parametrize(
    "params, reason",
    [
        (dict(max_tokens=5), FinishReason.LENGTH),
        (dict(max_tokens=50, ignore_eos=True), FinishReason.LENGTH),
    ],
)
def test_max_tokens(llm, params, reason):
    out = llm.generate(["count"], SamplingParams(**params))[0]
    assert len(out.token_ids) == params["max_tokens"] and out.finish_reason is reason


def test_stop_token_ids_and_stop_strings(llm):
    free = llm.generate(["abc"], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    stop_id = free.token_ids[5]
    out = llm.generate(["abc"], SamplingParams(max_tokens=20, stop_token_ids=[stop_id], ignore_eos=True))[0]
    assert out.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]
    assert out.finish_reason is FinishReason.STOP
    stop_str = free.text[len(free.text) // 2 :][:3]
    assert stop_str
    out = llm.generate(["abc"], SamplingParams(max_tokens=20, stop=[stop_str], ignore_eos=True))[0]
    assert out.text == free.text[: free.text.index(stop_str)] and out.finish_reason is FinishReason.STOP
    out = llm.generate(
        ["abc"], SamplingParams(max_tokens=20, stop=stop_str, include_stop_str_in_output=True, ignore_eos=True)
    )[0]
    assert out.text == free.text[: free.text.index(stop_str) + len(stop_str)]


def test_prompt_longer_than_context_is_a_clear_error(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), max_model_len=32)
    with pytest.raises(PromptTooLongError, match="32"):
        llm.generate([list(range(100, 140))])
    out = llm.generate([list(range(100, 130))], SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert len(out.token_ids) == 2 and out.finish_reason is FinishReason.LENGTH  # capped by the context


@pytest.mark.parametrize("prompt", ["", [], [-1], [10**9]])
def test_invalid_prompts_are_rejected(llm, prompt):
    with pytest.raises(ValueError):
        llm.engine.add_request(prompt, SamplingParams())


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(stop=[""])],
)
def test_invalid_sampling_params_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_abort_frees_blocks(llm):
    engine = llm.engine
    request = engine.add_request("some prompt", SamplingParams(max_tokens=100, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.kv.num_free_blocks < engine.kv.pool.num_blocks
    engine.abort(request.request_id)
    assert request.finish_reason is FinishReason.ABORT and not engine.has_unfinished
    assert engine.kv.num_free_blocks == engine.kv.pool.num_blocks


def test_token_times_are_monotonic_and_after_arrival(llm):
    out = llm.generate(["time"], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    times = [out.arrival_time, out.first_token_time, *out.token_times]
    assert times == sorted(times) and out.first_token_time == out.token_times[0]


@pytest.mark.parametrize(
    "params, allowed",
    [
        (SamplingParams(temperature=1.0, top_k=2), {3, 2}),
        (SamplingParams(temperature=1.0, top_p=0.5), {3}),  # p(3) = 0.64 alone reaches 0.5
        (SamplingParams(temperature=1.0, top_p=0.7), {3, 2}),
        (SamplingParams(temperature=1.0, top_p=5e-324), {3}),  # underflows to 0 in fp32 (found by fuzzing)
        (SamplingParams(temperature=5e-324), {3}),  # would overflow the division: treated as greedy
    ],
)
def test_top_k_top_p_filtering(params, allowed):
    logits = torch.log(torch.tensor([[0.02, 0.04, 0.3, 0.64]]))
    probs = logits_to_probs(logits, params)[0]
    assert set(torch.nonzero(probs).flatten().tolist()) == allowed
    assert probs.sum().item() == pytest.approx(1.0)


def test_one_failing_request_does_not_fail_the_batch(llm, monkeypatch):
    engine = llm.engine
    ok = engine.add_request("The capital of France is", SamplingParams(max_tokens=4))
    bad = engine.add_request("1, 2, 3,", SamplingParams(max_tokens=4, temperature=1.0, seed=1))
    real_sample = engine.runner.sampler.sample

    def sample(logits, request_id, params, position):
        if request_id == bad.request_id:
            raise RuntimeError("boom")
        return real_sample(logits, request_id, params, position)

    monkeypatch.setattr(engine.runner.sampler, "sample", sample)
    errors = {}
    while engine.has_unfinished:
        for out in engine.step():
            if out.error:
                errors[out.request_id] = out.error
    assert errors == {bad.request_id: "RuntimeError: boom"}
    assert ok.num_output_tokens == 4 and bad.finish_reason.value == "error"
    engine.pop_finished(ok.request_id), engine.pop_finished(bad.request_id)
    assert engine.kv.num_free_blocks == engine.kv.pool.num_blocks
