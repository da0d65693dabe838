"""Cost models for hardware we don't have: an analytic roofline, and published latency tables.
Both produce the same CostModel (adaserve.sched.cost_model) the engine profiles on this machine.

Roofline latency of one forward pass over `n` new tokens, reading `c` KV-cached tokens in all:
    weights  = num_params * bytes_per_param / (hbm_bw * num_gpus * efficiency)
    compute  = 2 * num_params * n / (peak_flops * num_gpus * efficiency)
    kv       = kv_bytes_per_token * c / (hbm_bw * num_gpus * efficiency)
    latency  = max(weights, compute) + kv + num_layers * layer_overhead_ms
layer_overhead_ms stands for kernel launches and the tensor-parallel all-reduces of each layer.
Worked example, Llama-3.1-70B (bf16) on 4 x A100-80GB (2039 GB/s, 312 TFLOP/s, efficiency 0.7,
0.1 ms per layer): weights 141 GB / 5.7 TB/s = 24.7 ms, compute at 1024 tokens = 145 TFLOP /
874 TFLOP/s = 166 ms, so 1 token -> 32.7 ms and 1024 tokens -> 174 ms (+ KV reads); the published
AdaServe table for this setup says 205 ms at 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

from adaserve.sched.cost_model import CostModel, LatencyCurve


@dataclass(frozen=True)
class Hardware:
    name: str
    hbm_gb_per_s: float  # per GPU
    peak_tflops: float  # per GPU, dense bf16
    num_gpus: int = 1  # tensor-parallel degree
    efficiency: float = 0.7
    layer_overhead_ms: float = 0.1


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_params: float
    num_layers: int
    kv_bytes_per_token: int  # all layers, K and V
    bytes_per_param: int = 2


HARDWARE = {
    "a100x4": Hardware("4 x A100-80GB", 2039.0, 312.0, num_gpus=4),
    "a100": Hardware("A100-80GB", 2039.0, 312.0),
    "h100x4": Hardware("4 x H100-SXM", 3350.0, 989.0, num_gpus=4),
}
# kv bytes/token = layers * 2 (K, V) * kv_heads * head_dim * 2 bytes
MODELS = {
    "llama-3.1-70b": ModelShape("Llama-3.1-70B", 70.6e9, 80, 80 * 2 * 8 * 128 * 2),
    "llama-3.2-1b": ModelShape("Llama-3.2-1B", 1.24e9, 16, 16 * 2 * 8 * 64 * 2),
    "llama-3.1-8b": ModelShape("Llama-3.1-8B", 8.03e9, 32, 32 * 2 * 8 * 128 * 2),
}
# Llama-3.1-70B on 4 x A100, tokens per forward -> ms, from the AdaServe artifact.
ADASERVE_A100_70B_TABLE = {
    128: 55.0,
    256: 85.0,
    384: 105.0,
    512: 125.0,
    640: 145.0,
    768: 165.0,
    896: 185.0,
    1024: 205.0,
}
GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096)


def roofline_ms(hw: Hardware, model: ModelShape, num_tokens: int, num_context_tokens: int = 0) -> float:
    bandwidth = hw.hbm_gb_per_s * 1e9 * hw.num_gpus * hw.efficiency  # bytes/s
    flops = hw.peak_tflops * 1e12 * hw.num_gpus * hw.efficiency
    weights = model.num_params * model.bytes_per_param / bandwidth
    compute = 2 * model.num_params * num_tokens / flops
    kv = model.kv_bytes_per_token * num_context_tokens / bandwidth
    return 1000.0 * (max(weights, compute) + kv) + model.num_layers * hw.layer_overhead_ms


def roofline_curve(hw: Hardware, model: ModelShape) -> LatencyCurve:
    bandwidth = hw.hbm_gb_per_s * 1e9 * hw.num_gpus * hw.efficiency
    return LatencyCurve(
        GRID,
        tuple(roofline_ms(hw, model, n) for n in GRID),
        ms_per_context_token=1000.0 * model.kv_bytes_per_token / bandwidth,
    )


def roofline_cost_model(hw: Hardware, target: ModelShape, draft: ModelShape | None) -> CostModel:
    meta = {"kind": "roofline", "hardware": hw.name, "target": target.name, "draft": draft.name if draft else None}
    return CostModel(roofline_curve(hw, target), roofline_curve(hw, draft) if draft else None, meta)


def table_cost_model(table: dict[int, float], hw: Hardware, target: ModelShape, draft: ModelShape) -> CostModel:
    """A published target table (tokens -> ms). It starts at 128 tokens; below that the roofline
    of the same model and hardware supplies the points (without them, one token would cost as
    much as 128). The draft, which no table covers, comes from the roofline; so does the KV term."""
    roof = roofline_curve(hw, target)
    low = [n for n in GRID if n < min(table)]
    points = {**{n: roofline_ms(hw, target, n) for n in low}, **table}
    curve = LatencyCurve(tuple(sorted(points)), tuple(points[n] for n in sorted(points)), roof.ms_per_context_token)
    meta = {
        "kind": "table",
        "target": f"{target.name} (published table, roofline below {min(table)} tokens)",
        "hardware": hw.name,
        "draft": draft.name,
    }
    return CostModel(curve, roofline_curve(hw, draft), meta)


def parse_cost_model(spec: str) -> CostModel:
    """'profile:PATH' (from `adaserve profile`), 'roofline:HW:TARGET[:DRAFT]' (HW in HARDWARE,
    models in MODELS), or 'table:adaserve-a100-70b[:HW:DRAFT]' (see table_cost_model)."""
    kind, _, arg = spec.partition(":")
    parts = arg.split(":") if arg else []
    try:
        if kind == "profile":
            return CostModel.load(arg)
        if kind == "roofline":
            hw, target, *rest = parts
            return roofline_cost_model(HARDWARE[hw], MODELS[target], MODELS[rest[0]] if rest else None)
        if kind == "table" and parts and parts[0] == "adaserve-a100-70b":
            hw, draft = (
                (HARDWARE[parts[1]], MODELS[parts[2]])
                if len(parts) == 3
                else (HARDWARE["a100x4"], MODELS["llama-3.2-1b"])
            )
            return table_cost_model(ADASERVE_A100_70B_TABLE, hw, MODELS["llama-3.1-70b"], draft)
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"bad cost model {spec!r}: {e!r}; hardware {list(HARDWARE)}, models {list(MODELS)}") from e
    raise ValueError(f"unknown cost model {spec!r} (profile:PATH, roofline:HW:TARGET[:DRAFT], table:adaserve-a100-70b)")
