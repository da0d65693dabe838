"""A live server's step log (adaserve.engine.step_log) against a cost model: the prediction for each
logged forward pass, made exactly as the simulator makes it; what a run measured beyond the
predictions (how much faster or slower its passes ran than profiled); and a model of the engine's
host time per step, fitted over logged steps. `adaserve simulate validate` calibrates its replays
with these; benchmarks/step_log_vs_cost_model.py prints them per policy and kind of step."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from adaserve.engine.step_log import PassRecord, StepRecord
from adaserve.sched.cost_model import CostModel, PassTerms
from adaserve.sim.config import PassCorrection


def pass_terms(cost: CostModel, p: PassRecord) -> PassTerms:
    """The cost model's time for one logged pass, term by term: padded KV positions read like cached
    ones, logits rows beyond one per sequence included."""
    curve = cost.draft if p.model == "draft" else cost.target
    return curve.terms(
        p.num_tokens,
        p.num_context_tokens + p.num_padded_kv,
        p.num_seqs,
        p.num_context_pairs,
        max(0, p.num_logit_rows - p.num_seqs),
    )


def predicted_pass_ms(cost: CostModel, p: PassRecord) -> float:
    return pass_terms(cost, p).total_ms


def measured_pass_ms(p: PassRecord) -> float:
    return p.forward_ms + p.logits_ms


@dataclass(frozen=True)
class RunTiming:
    """What one server run measured about its own steps."""

    num_steps: int
    host_ms_per_step: float  # mean step time outside the forward passes: scheduling, selection, sampling
    speed_factor: float  # measured pass time / predicted, summed over the run (> 1: slower than profiled)
    predicted_pass_ms: float  # summed over the run
    measured_pass_ms: float


def run_timing(steps: list[StepRecord], cost: CostModel) -> RunTiming:
    if not steps:
        raise ValueError("the step log has no steps")
    measured = sum(measured_pass_ms(p) for s in steps for p in s.passes)
    predicted = sum(predicted_pass_ms(cost, p) for s in steps for p in s.passes)
    host = sum(s.step_ms for s in steps) - measured
    return RunTiming(len(steps), host / len(steps), measured / max(predicted, 1e-9), predicted, measured)


@dataclass(frozen=True)
class HostModel:
    """Engine time per step outside the forward passes: scheduling and bookkeeping (per step), and
    per logits row the work on a whole vocabulary row (log-softmax and top-k of a draft row, argmax
    or sampling of a target row; 152k entries for Qwen), tree growth and selection with it."""

    ms_per_step: float
    ms_per_target_row: float
    ms_per_draft_row: float

    def __call__(self, num_target_rows: int, num_draft_rows: int) -> float:
        return self.ms_per_step + self.ms_per_target_row * num_target_rows + self.ms_per_draft_row * num_draft_rows


def logit_rows(step: StepRecord, model: str) -> int:
    return sum(p.num_logit_rows for p in step.passes if p.model == model)


def fit_host_model(steps: list[StepRecord]) -> HostModel:
    """Least squares of each step's host time on its target and draft logits rows (terms that come
    out negative are dropped and the rest refitted)."""
    host = np.array([s.step_ms - sum(measured_pass_ms(p) for p in s.passes) for s in steps])  # [num_steps]
    columns = np.array([[1.0, logit_rows(s, "target"), logit_rows(s, "draft")] for s in steps])  # [num_steps, 3]
    return HostModel(*_nonnegative_lstsq(columns, host))


def _nonnegative_lstsq(columns: np.ndarray, values: np.ndarray) -> list[float]:
    """Least-squares coefficients of columns [n, k] for values [n]; terms that come out negative are
    dropped (0) and the rest refitted."""
    keep = list(range(columns.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(columns[:, keep], values, rcond=None)
        negative = [k for k, c in zip(keep, coef) if c < 0]
        if not negative:
            break
        keep = [k for k in keep if k not in negative]
    full = dict(zip(keep, coef.tolist()))
    return [float(full.get(k, 0.0)) for k in range(columns.shape[1])]


def fit_pass_correction(passes: list[PassRecord], cost: CostModel) -> PassCorrection:
    """Least squares of one model's measured pass times on the terms of their predictions and the
    number of extra sequences (no constant). Terms that are zero in every pass keep weight 1 (nothing
    to fit them on); a weight that comes out negative is dropped (0) and the rest refitted."""
    if not passes:
        return PassCorrection()
    measured = np.array([measured_pass_ms(p) for p in passes])  # [num_passes]
    terms = [pass_terms(cost, p) for p in passes]
    names = [f.name for f in fields(PassCorrection)]  # base, tokens, context, pairs, rows, ms_per_extra_seq
    columns = np.array(
        [[getattr(t, f"{n}_ms") for n in names[:-1]] + [t.num_extra_seqs] for t in terms]
    )  # [num_passes, 6]
    fitted = [k for k in range(len(names)) if columns[:, k].any()]
    weights = dict.fromkeys(names, 1.0)
    weights.update(zip([names[k] for k in fitted], _nonnegative_lstsq(columns[:, fitted], measured)))
    if not columns[:, -1].any():
        weights["ms_per_extra_seq"] = None  # no pass had two sequences: keep the profile's gamma
    return PassCorrection(**weights)
