"""Pass corrections: a model's logged passes fitted against its cost curve (a weight per term and a
cost per extra sequence), and the simulator charging them."""

import json
from dataclasses import asdict

import pytest

from adaserve.engine.step_log import PassRecord, StepRecord
from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.sim.config import PassCorrection, SimConfig
from adaserve.sim.run import simulate
from adaserve.sim.step_timing import fit_pass_correction
from adaserve.sim.validate import calibrated
from adaserve.sim.workloads import SimRequest
from adaserve.slo import SLO

COST = CostModel(LatencyCurve((1, 64), (10.0, 10.0 + 63 * 0.5)), LatencyCurve((1,), (5.0,)))


def target_pass(num_seqs: int, num_tokens: int, measured_ms: float) -> PassRecord:
    return PassRecord("target", num_tokens, num_seqs, 0, 0, num_logit_rows=num_seqs, forward_ms=measured_ms)


# (sequences, tokens): predicted base 10 + tokens 0.5 x (tokens - 1) ms; measured 0.8 x base + 1.5 x tokens
# + 4 ms per extra sequence.
SHAPES = [(1, 1), (2, 2), (4, 9), (8, 8), (3, 30), (1, 20)]


def measured(num_seqs: int, num_tokens: int, base: float = 0.8, tokens: float = 1.5, per_seq: float = 4.0) -> float:
    return base * 10 + tokens * 0.5 * (num_tokens - 1) + per_seq * (num_seqs - 1)


def test_the_fit_recovers_each_terms_weight_and_the_cost_per_extra_sequence():
    fit = fit_pass_correction([target_pass(s, t, measured(s, t)) for s, t in SHAPES], COST)
    assert (fit.base, fit.tokens, fit.ms_per_extra_seq) == pytest.approx((0.8, 1.5, 4.0))
    assert (fit.context, fit.pairs, fit.rows) == (1.0, 1.0, 1.0)  # no pass had context, pairs or extra rows
    assert fit(COST.target.terms(3, num_seqs=3)) == pytest.approx(0.8 * 10 + 1.5 * 1.0 + 4.0 * 2)
    # Passes that get cheaper with more sequences: no negative per-sequence cost, the rest refitted.
    falling = fit_pass_correction([target_pass(s, t, measured(s, t, per_seq=-1.0)) for s, t in SHAPES], COST)
    assert falling.ms_per_extra_seq == 0.0 and falling.tokens > 1.0
    single = fit_pass_correction([target_pass(1, t, measured(1, t)) for _, t in SHAPES], COST)
    assert single.ms_per_extra_seq is None  # never two sequences in a pass: the profile's gamma stays
    assert fit_pass_correction([], COST) == PassCorrection()


def test_the_default_correction_changes_nothing():
    curve = LatencyCurve((1, 64), (10.0, 41.5), 0.01, ms_per_seq=2.0, ms_per_context_pair=1e-4, ms_per_logit_row=0.3)
    terms = curve.terms(20, 900, num_seqs=3, num_context_pairs=4000, num_extra_logit_rows=12)
    assert PassCorrection()(terms) == pytest.approx(curve(20, 900, 3, 4000, 12))


def test_the_simulator_charges_each_pass_its_correction():
    """Two decodes per step at 10 ms predicted: x2 + 3 ms for the second sequence = 23 ms a token."""
    config = SimConfig(policy="none", target_pass=PassCorrection(base=2.0, ms_per_extra_seq=3.0))
    workload = [SimRequest(0.0, "coding", 32, 5, SLO()), SimRequest(0.0, "chat", 32, 5, SLO())]
    result = simulate(config, CostModel(LatencyCurve((1,), (10.0,))), None, workload)
    assert result["categories"]["all"]["tpot_ms"]["median"] == pytest.approx(23.0)


def test_validate_fits_the_corrections_over_the_sweeps_logs(tmp_path):
    (tmp_path / "step_logs").mkdir()
    for policy in ("chain-4", "adaserve"):  # one fit over every server of the sweep
        steps = [
            StepRecord(
                0.0, policy, 1.0 + measured(s, t, 2.0, 2.0, 5.0), [target_pass(s, t, measured(s, t, 2.0, 2.0, 5.0))]
            )
            for s, t in SHAPES
        ]
        (tmp_path / "step_logs" / f"{policy}.jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in steps))
    config, info = calibrated("passes", SimConfig(), "chain:4", tmp_path, {}, COST)
    assert (config.target_pass.base, config.target_pass.tokens, config.target_pass.ms_per_extra_seq) == pytest.approx(
        (2.0, 2.0, 5.0)
    )
    assert config.draft_pass == PassCorrection() and config.time_scale == 1.0  # no draft passes logged
    assert config.step_overhead_ms == pytest.approx(1.0) and info["target_pass"]["base"] == pytest.approx(2.0)
