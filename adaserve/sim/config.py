"""What the simulated server is configured with. Plain data, importable without torch (the CLI
reads its defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PassCorrection:
    """A model's logged passes against its cost curve: measured ~ scale x predicted + ms_per_extra_seq
    x (sequences - 1). Fitted from servers' step logs (the profile times one sequence, or several
    of equal length: one attention call per layer; sequences of different lengths take several)."""

    scale: float = 1.0
    ms_per_extra_seq: float = 0.0

    def __call__(self, predicted_ms: float, num_seqs: int) -> float:
        return self.scale * predicted_ms + self.ms_per_extra_seq * max(0, num_seqs - 1)


@dataclass(frozen=True)
class SimConfig:
    policy: str = "adaserve"
    max_num_seqs: int = 32  # the server's defaults
    max_num_batched_tokens: int = 512
    kv_capacity_tokens: int = 9360  # what 512 MiB holds for Qwen2.5-Coder-1.5B fp32
    block_size: int = 16
    step_overhead_ms: float = 0.0  # per iteration, beyond the forward passes (scheduling, sampling)
    # Host time per logits row (a whole-vocabulary log-softmax/top-k/argmax, tree growth and selection).
    host_ms_per_target_row: float = 0.0
    host_ms_per_draft_row: float = 0.0
    time_scale: float = 1.0  # multiplies the cost model's pass times (a machine slower or faster than profiled)
    target_pass: PassCorrection = PassCorrection()  # each target / draft pass, before time_scale
    draft_pass: PassCorrection = PassCorrection()
    seed: int = 0
