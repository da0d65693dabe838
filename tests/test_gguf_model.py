"""SmolLM2 with its GGUF weights kept quantized, against the same weights dequantized to fp32."""

import pytest
import torch

from adaserve import LLM, SamplingParams
from adaserve.models.quantized import QuantLinear

TEXT = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "The capital of France is Paris. Once upon a time, in a small village, there lived an old baker."
)


def next_token_logits(llm: LLM, token_ids: list[int]) -> torch.Tensor:
    executor = llm.engine.runner.executor
    slots = executor.kv.reserve("probe", len(token_ids))
    seq = executor.seq_input("probe", token_ids, list(range(len(token_ids))), slots, 0)
    logits = executor.logits(executor.forward([seq]))  # [num_tokens, vocab]
    executor.kv.free("probe")
    return logits


@pytest.fixture(scope="module")
def both(smollm2_dir):
    return LLM(str(smollm2_dir), weights="gguf"), LLM(str(smollm2_dir), weights="fp32")


def test_auto_picks_the_quantized_weights_for_a_gguf_model(smollm2_dir, both):
    assert LLM(str(smollm2_dir)).engine.runner.weights == "gguf"
    assert [llm.engine.runner.weights for llm in both] == ["gguf", "fp32"]


def test_quantized_logits_track_the_dequantized_model(both):
    gguf, fp32 = both
    ids = gguf.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    quant, ref = next_token_logits(gguf, ids), next_token_logits(fp32, ids)
    agreement = (quant.argmax(-1) == ref.argmax(-1)).float().mean()
    cosine = torch.nn.functional.cosine_similarity(quant, ref, dim=-1)  # [num_tokens]
    # The worst position is noisy: int8 activations amplify fp32 rounding (an RMSNorm in fp64
    # instead moves it between 0.97 and 0.99), so the bound on the minimum is loose, the mean's tight.
    assert agreement >= 0.9 and cosine.mean() > 0.998 and cosine.min() > 0.95, (agreement, cosine)


def test_weights_gguf_is_refused_for_a_model_without_a_gguf_file(tiny_model_dirs):
    with pytest.raises(ValueError, match="did not come from a GGUF file"):
        LLM(str(tiny_model_dirs["llama"]), weights="gguf")


def test_packed_weights_are_cached_and_a_corrupt_cache_is_rebuilt(smollm2_dir, tmp_path, monkeypatch):
    from adaserve.models.gguf_loader import cached_state
    from adaserve.models.loader import read_model_config
    from adaserve.models.sources import gguf_source

    monkeypatch.setenv("ADASERVE_CACHE", str(tmp_path))
    gguf, cfg = gguf_source(smollm2_dir), read_model_config(smollm2_dir)
    first = cached_state(gguf, cfg)
    (cache_file,) = (tmp_path / "packed").glob("*.safetensors")
    assert all(torch.equal(first[k], v) for k, v in cached_state(gguf, cfg).items())  # read back
    cache_file.write_bytes(b"torn write")
    again = cached_state(gguf, cfg)
    assert all(torch.equal(first[k], v) for k, v in again.items()) and cache_file.stat().st_size > 1000


def test_an_int4_draft_tracks_its_int8_self_and_keeps_greedy_output(smollm2_dir, both):
    """SmolLM2 as its own draft, requantized to int4: the draft's logits move a little, the output
    is still the target's token for token (the draft only proposes)."""
    gguf, _ = both
    spec = LLM(str(smollm2_dir), draft=str(smollm2_dir), draft_int4=True, spec_policy="chain:4")
    draft = spec.engine.runner.draft
    linears = [m for m in draft.model.modules() if isinstance(m, QuantLinear)]
    assert linears and all(m.int4 for m in linears)
    ids = gguf.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    int8_logits = next_token_logits(gguf, ids)
    slots = draft.kv.reserve("probe", len(ids))
    int4_logits = draft.logits(draft.forward([draft.seq_input("probe", ids, list(range(len(ids))), slots, 0)]))
    draft.kv.free("probe")
    agreement = (int4_logits.argmax(-1) == int8_logits.argmax(-1)).float().mean()
    assert 0.7 <= agreement < 1.0, agreement  # close, and really requantized
    params = SamplingParams(max_tokens=32)
    prompts = [TEXT[:60], TEXT[100:160]]
    expected = [o.token_ids for o in gguf.generate(prompts, params)]
    assert [o.token_ids for o in spec.generate(prompts, params)] == expected
    assert spec.engine.spec.stats.totals.num_accepted > 0
