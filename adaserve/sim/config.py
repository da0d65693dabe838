"""What the simulated server is configured with. Plain data, importable without torch (the CLI
reads its defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from adaserve.config import EngineConfig
from adaserve.sched.cost_model import PassTerms


@dataclass(frozen=True)
class PassCorrection:
    """A model's logged passes against its cost curve: a weight per term of the prediction (see
    PassTerms) and a cost per extra sequence that replaces the profile's own, fitted by least squares
    over servers' step logs (adaserve.sim.step_timing.fit_pass_correction). The default changes nothing.

    Why per term: the terms drift apart. One-token passes stream the weights (memory bandwidth,
    shared with the machine's other tenants) while large passes are compute-bound; the profile times
    one sequence, or several of equal length (one attention call per layer), while a server's
    sequences differ in length and attend in several calls per layer."""

    base: float = 1.0
    tokens: float = 1.0
    context: float = 1.0
    pairs: float = 1.0
    rows: float = 1.0
    ms_per_extra_seq: float | None = None  # None: the profile's gamma

    def __call__(self, t: PassTerms) -> float:
        seqs_ms = t.seqs_ms if self.ms_per_extra_seq is None else self.ms_per_extra_seq * t.num_extra_seqs
        return (
            self.base * t.base_ms
            + self.tokens * t.tokens_ms
            + self.context * t.context_ms
            + self.pairs * t.pairs_ms
            + self.rows * t.rows_ms
            + seqs_ms
        )


@dataclass(frozen=True)
class SimConfig:
    policy: str = "adaserve"
    max_num_seqs: int = EngineConfig.max_num_seqs  # the server's defaults
    max_num_batched_tokens: int = EngineConfig.max_num_batched_tokens
    kv_capacity_tokens: int = 9360  # what 512 MiB holds for Qwen2.5-Coder-1.5B fp32
    block_size: int = EngineConfig.block_size
    step_overhead_ms: float = 0.0  # per iteration, beyond the forward passes (scheduling, sampling)
    # Host time per logits row (a whole-vocabulary log-softmax/top-k/argmax, tree growth and selection).
    host_ms_per_target_row: float = 0.0
    host_ms_per_draft_row: float = 0.0
    time_scale: float = 1.0  # multiplies the cost model's pass times (a machine slower or faster than profiled)
    target_pass: PassCorrection = PassCorrection()  # each target / draft pass, before time_scale
    draft_pass: PassCorrection = PassCorrection()
    seed: int = 0
    # Per-policy sequence limits, overriding max_num_seqs (the paper's protocol: 64 for AdaServe, 512
    # for the vLLM baselines).
    max_num_seqs_by_policy: tuple[tuple[str, int], ...] = ()

    def for_policy(self, policy: str) -> SimConfig:
        seqs = dict(self.max_num_seqs_by_policy).get(policy, self.max_num_seqs)
        return replace(self, policy=policy, max_num_seqs=seqs)

    def engine_config(self) -> EngineConfig:
        """What the simulated engine runs with (its KV cache is sized in tokens here, not bytes)."""
        return EngineConfig(
            spec_policy=self.policy,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            block_size=self.block_size,
            seed=self.seed,
        )
