"""Pass corrections: a model's logged passes fitted against its cost curve (scale and a cost per
extra sequence), and the simulator charging them."""

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


# (sequences, tokens): predicted 10 + 0.5 x (tokens - 1) ms; measured 1.5 x that + 4 ms per extra sequence
SHAPES = [(1, 1), (2, 2), (4, 9), (8, 8), (3, 30), (1, 20)]


def test_the_fit_recovers_scale_and_cost_per_extra_sequence():
    passes = [target_pass(s, t, 1.5 * (10 + 0.5 * (t - 1)) + 4.0 * (s - 1)) for s, t in SHAPES]
    fit = fit_pass_correction(passes, COST)
    assert (fit.scale, fit.ms_per_extra_seq) == pytest.approx((1.5, 4.0))
    assert fit(10.0, 3) == pytest.approx(23.0)
    # Passes that get cheaper with more sequences: no negative per-sequence cost, only a scale.
    falling = fit_pass_correction([target_pass(s, t, 2 * (10 + 0.5 * (t - 1)) - (s - 1)) for s, t in SHAPES], COST)
    assert falling.ms_per_extra_seq == 0.0 and 1.5 < falling.scale < 2.0
    assert fit_pass_correction([], COST) == PassCorrection()


def test_the_simulator_charges_each_pass_its_correction():
    """Two decodes per step at 10 ms predicted: x2 + 3 ms for the second sequence = 23 ms a token."""
    config = SimConfig(policy="none", target_pass=PassCorrection(2.0, 3.0))
    workload = [SimRequest(0.0, "coding", 32, 5, SLO()), SimRequest(0.0, "chat", 32, 5, SLO())]
    result = simulate(config, CostModel(LatencyCurve((1,), (10.0,))), None, workload)
    assert result["categories"]["all"]["tpot_ms"]["median"] == pytest.approx(23.0)


def test_validate_fits_the_corrections_over_the_sweeps_logs(tmp_path):
    (tmp_path / "step_logs").mkdir()
    for policy in ("chain-4", "adaserve"):  # one fit over every server of the sweep
        steps = [StepRecord(0.0, policy, 1.0 + 2 * (10 + 0.5 * (t - 1)) + 5.0 * (s - 1),
                            [target_pass(s, t, 2 * (10 + 0.5 * (t - 1)) + 5.0 * (s - 1))]) for s, t in SHAPES]
        (tmp_path / "step_logs" / f"{policy}.jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in steps))
    config, info = calibrated("passes", SimConfig(), "chain:4", tmp_path, {}, COST)
    assert (config.target_pass.scale, config.target_pass.ms_per_extra_seq) == pytest.approx((2.0, 5.0))
    assert config.draft_pass == PassCorrection() and config.time_scale == 1.0  # no draft passes logged
    assert config.step_overhead_ms == pytest.approx(1.0) and info["target_pass"]["scale"] == pytest.approx(2.0)
