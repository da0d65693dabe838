"""Crash recovery: nothing in the cache is trusted blindly (a torn or foreign packed-weight file is
packed again, a bad profile is measured again, a killed kernel build's lock does not block), and
after SIGKILL a restart serves the same output again within its load time."""

import threading

import httpx
import pytest
import torch
from safetensors.torch import save_file

from adaserve.engine import profiler
from adaserve.kernels import _build_lock
from adaserve.models import gguf_loader
from adaserve.models.loader import read_model_config
from adaserve.models.sources import gguf_source
from adaserve.sched.cost_model import CostModel, LatencyCurve
from tests.factories import ForwardHarness, SeqInput, ServerProcess


def _logits(model) -> torch.Tensor:  # [5, vocab]
    return ForwardHarness(model).forward([SeqInput("a", [1, 2, 3, 4, 5], list(range(5)))])[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "wrong_block_size"])
def test_a_damaged_packed_weight_cache_is_packed_again(smollm2_dir, tmp_path, monkeypatch, damage):
    gguf, cfg = gguf_source(smollm2_dir), read_model_config(smollm2_dir)
    cache = tmp_path / "packed.safetensors"
    monkeypatch.setattr(
        gguf_loader, "_cache_path", lambda _, int4=False: tmp_path / "int4.safetensors" if int4 else cache
    )
    expected = _logits(gguf_loader.load_gguf_model(gguf, cfg))
    if damage == "garbage":
        cache.write_bytes(b"\x00not a safetensors file" * 100)
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 3])
    else:  # readable, but not this model's packing
        state = gguf_loader.load_file(str(cache))
        name = "layers.0.self_attn.o_proj.weight"
        if damage == "wrong_shape":  # from another model: one matrix has the wrong shape
            state[name] = state[name][:-1].clone()
        else:  # the right matrix shapes in another layout (384-byte blocks, as an unreleased int6 had)
            state[name] = torch.cat([state[name], state[name][..., :128]], dim=-1)  # int4: 256 + 128 bytes
        save_file(state, str(cache))
    assert torch.equal(_logits(gguf_loader.load_gguf_model(gguf, cfg)), expected)
    assert gguf_loader.load_file(str(cache)).keys() == gguf_loader.gguf_state(gguf, cfg).keys()


def test_an_int4_draft_over_a_damaged_int8_cache_is_packed_again(smollm2_dir, tmp_path, monkeypatch):
    """The int4 packing is made from the int8 cache: a misshapen int8 cache with no int4 one yet is
    packed again too, not raised."""
    gguf, cfg = gguf_source(smollm2_dir), read_model_config(smollm2_dir)
    cache, int4_cache = tmp_path / "packed.safetensors", tmp_path / "int4.safetensors"
    monkeypatch.setattr(gguf_loader, "_cache_path", lambda _, int4=False: int4_cache if int4 else cache)
    expected = _logits(gguf_loader.load_gguf_model(gguf, cfg, int4=True))
    int4_cache.unlink()
    state = gguf_loader.load_file(str(cache))
    name = "layers.0.self_attn.o_proj.weight"
    state[name] = state[name][:-1].clone()
    save_file(state, str(cache))
    assert torch.equal(_logits(gguf_loader.load_gguf_model(gguf, cfg, int4=True)), expected)
    assert int4_cache.exists()


@pytest.mark.parametrize(
    "text",
    [
        "{torn",
        "[]",
        "{}",
        '{"target": {"num_tokens": [1, 8], "latency_ms": [-1, 5]}}',
        '{"target": {"num_tokens": [8, 1], "latency_ms": [5, 6]}}',
    ],
)
def test_a_bad_profile_is_measured_again(tmp_path, monkeypatch, text):
    path = tmp_path / "profile.json"
    path.write_text(text)
    fresh = CostModel(LatencyCurve((1, 8), (10.0, 12.0)))
    monkeypatch.setattr(profiler, "profile_path", lambda key: path)
    monkeypatch.setattr(profiler, "profile_models", lambda *args, **kwargs: fresh)
    assert profiler.load_or_profile(None, None, "key", max_tokens=8) is fresh
    assert CostModel.load(path).target.latency_ms == (10.0, 12.0)  # rewritten


def test_a_killed_kernel_build_does_not_block_the_next(tmp_path):
    (tmp_path / "lock").write_text("")  # what torch's builder leaves when killed mid-build
    entered = threading.Event()

    def build():
        with _build_lock(tmp_path):
            entered.set()

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    assert entered.wait(timeout=10) and not (tmp_path / "lock").exists()


def _greedy(url: str) -> str:
    body = {"prompt": "The three primary colors are", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    return httpx.post(url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]


def test_after_sigkill_a_restart_serves_again(tmp_path):
    first = ServerProcess()
    try:
        expected = _greedy(first.url)
        body = {"prompt": "Tell a long story.", "max_tokens": 500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", first.url + "/v1/completions", json=body, timeout=60) as s:
            next(s.iter_lines())  # mid-stream
            first.proc.kill()  # SIGKILL
        first.proc.wait(timeout=30)
    finally:
        first.kill()
    second = ServerProcess(port=first.port)
    try:
        assert second.start_seconds < 2 * first.start_seconds + 10, (first.start_seconds, second.start_seconds)
        assert _greedy(second.url) == expected
    finally:
        second.kill()
