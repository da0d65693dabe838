"""Build our CausalLM from a Hugging Face directory (config.json + *.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from adaserve.models.config import ModelConfig
from adaserve.models.llama import CausalLM, Rotary
from adaserve.models.packed_linear import cpu_packing_available, pack_linears

# Our fused parameters and the HF parameters they are concatenated from (in this order).
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def read_model_config(model_dir: str | Path) -> ModelConfig:
    from transformers import AutoConfig

    return ModelConfig.from_hf(AutoConfig.from_pretrained(str(model_dir)))


def _read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                tensors[name.removeprefix("model.")] = fh.get_tensor(name)
    return tensors


def _our_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename HF tensors to our module names, fusing q/k/v and gate/up."""
    state = {k: v for k, v in hf.items() if not k.startswith("layers.")}
    if cfg.tie_word_embeddings or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    for i in range(cfg.num_layers):
        prefix = f"layers.{i}."
        layer = {k[len(prefix) :]: v for k, v in hf.items() if k.startswith(prefix)}
        for fused, parts in FUSED.items():
            for kind in ("weight", "bias"):
                names = [f"{p}.{kind}" for p in parts]
                if all(n in layer for n in names):
                    state[f"{prefix}{fused}.{kind}"] = torch.cat([layer.pop(n) for n in names])
        state.update({prefix + k: v for k, v in layer.items()})
    return state


def load_model(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_positions: int | None = None,
    packed_linear: bool = True,
    num_layers: int | None = None,
) -> CausalLM:
    """Load weights into our model. `num_layers` keeps only the first layers (a cheap weak draft)."""
    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir)
    if num_layers is not None:
        cfg = ModelConfig(**{**cfg.__dict__, "num_layers": num_layers})
    state = _our_state_dict(_read_safetensors(model_dir), cfg)
    state = {k: v for k, v in state.items() if not k.startswith("layers.") or int(k.split(".")[1]) < cfg.num_layers}
    with torch.device("meta"):
        model = CausalLM(cfg, max_positions)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
    num_positions = max_positions or cfg.max_position_embeddings
    model.rotary = Rotary(cfg.head_dim, cfg.rope_theta, num_positions)  # (off the meta device before .to)
    model = model.to(device=device, dtype=dtype).eval()
    # Rotary tables stay fp32 whatever the dtype (bf16 cannot hold cos/sin of large positions well).
    model.rotary = Rotary(cfg.head_dim, cfg.rope_theta, num_positions).to(device)
    model.requires_grad_(False)
    if packed_linear and torch.device(device).type == "cpu" and dtype == torch.float32 and cpu_packing_available():
        pack_linears(model)
    return model
