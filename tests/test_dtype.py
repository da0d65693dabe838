"""--dtype: how the activation dtype is resolved, and a bf16 engine that runs and speculates losslessly."""

import pytest
import torch

from adaserve import LLM, SamplingParams
from adaserve.config import EngineConfig
from adaserve.engine import builder


@pytest.mark.parametrize(
    "dtype, weights, native_bf16, expected",
    [
        ("float32", "fp32", True, torch.float32),
        ("fp32", "fp32", True, torch.float32),
        ("bf16", "fp32", False, torch.bfloat16),  # asked for: honoured even if emulated
        ("auto", "fp32", True, torch.bfloat16),
        ("auto", "fp32", False, torch.float32),
        ("auto", "gguf", True, torch.float32),  # the GGUF kernels take fp32
        ("float32", "gguf", True, torch.float32),
    ],
)
def test_activation_dtype(monkeypatch, dtype, weights, native_bf16, expected):
    monkeypatch.setattr(builder, "_native_bf16", lambda device: native_bf16)
    assert builder.activation_dtype(EngineConfig(dtype=dtype), weights) is expected


def test_bf16_with_gguf_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="--weights fp32"):
        builder.activation_dtype(EngineConfig(dtype="bf16"), "gguf")


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineConfig(dtype="int3")


def test_bf16_engine_generates_and_speculation_is_lossless(tiny_model_dirs):
    model = str(tiny_model_dirs["llama"])
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    plain = LLM(model, dtype="bf16", block_size=4, max_num_batched_tokens=64)
    assert plain.engine.runner.executor.kv_cache.k.dtype is torch.bfloat16
    expected = plain.generate(["a b c", "hello"], params)
    spec = LLM(model, dtype="bf16", draft=model, spec_policy="chain:3", block_size=4, max_num_batched_tokens=64)
    got = spec.generate(["a b c", "hello"], params)
    assert all(len(o.token_ids) == 16 for o in expected)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
