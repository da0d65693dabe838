"""The simulator's validation against measured sweeps and its calibration from the servers' step logs."""

import json

import pytest

from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.sim.acceptance import ParametricAcceptance
from adaserve.sim.config import SimConfig
from adaserve.sim.simulator import Simulator
from adaserve.sim.validate import _row
from adaserve.sim.workloads import SimRequest
from adaserve.slo import SLO
from tests.test_simulator import slo_cost


def test_validation_row_tolerances():
    row = _row(
        "adaserve",
        0.5,
        {"attainment": 0.8, "goodput_tokens_per_s": 10.0, "tpot_ms": None},
        {"attainment": 0.75, "goodput_tokens_per_s": 12.5, "tpot_ms": None},
    )
    assert row["attainment_diff_pp"] == pytest.approx(-5.0) and row["attainment_ok"]
    assert row["goodput_rel_diff"] == pytest.approx(0.25) and not row["goodput_ok"]


def test_validate_round_trip_on_a_simulated_bench_sweep(tmp_path):
    """A bench sweep directory whose 'measurements' are simulator runs replays to the same numbers."""
    from dataclasses import replace

    from adaserve.bench.report import bench_report
    from adaserve.sim.commands import ModelSources
    from adaserve.sim.validate import ValidateConfig, validate

    cost = slo_cost()
    (tmp_path / "cost.json").write_text(cost.to_json())
    workload = [
        SimRequest(0.3 * i, "coding" if i % 3 else "chat", 50 + 10 * i, 24, SLO(tpot_ms=60.0 if i % 3 else 200.0))
        for i in range(9)
    ]
    results = {}
    for policy in ("none", "adaserve"):
        sim = Simulator(SimConfig(policy=policy), cost, ParametricAcceptance(top1=0.7))
        records = sim.run(workload)
        rows = [
            dict(
                r.to_dict(),
                slo={"tpot_ms": r.slo.tpot_ms, "ttft_ms": None},
                server_usage={"prompt_tokens": item.num_prompt_tokens},
            )
            for r, (item, _) in zip(records, sim.requests)
        ]
        wall = max(r.chunk_times[-1] for r in records)
        report = bench_report(records, wall)
        (tmp_path / f"{policy}_rate_1.0.json").write_text(
            json.dumps({"args": {"output_tokens": 24}, "records": rows, **report})
        )
        results[policy] = [{"policy": policy, "value": 1.0, **report}]
    (tmp_path / "sweep_rate.json").write_text(
        json.dumps({"variable": "rate", "unloaded_tpot_ms": 100.0, "results": results})
    )
    config = ValidateConfig(
        bench_dirs=(tmp_path,),
        sim=SimConfig(max_num_seqs=32, max_num_batched_tokens=512, kv_capacity_tokens=9360, step_overhead_ms=0.0),
        models=ModelSources(
            cost=f"profile:{tmp_path / 'cost.json'}", acceptance="parametric:top1=0.7", model=None, draft=None
        ),
        calibration="none",
        sim_runs=1,
        out_dir=tmp_path / "out",
    )
    out = validate(config)
    assert out["num_points"] == 2 and out["num_within_targets"] == 2
    assert all(abs(r["attainment_diff_pp"]) < 1e-9 and abs(r["goodput_rel_diff"]) < 0.01 for r in out["rows"])
    # Plain decoding replays every request's TPOT exactly (9 requests, 1 sweep).
    assert out["rows"][0]["request_tpot_rel_errors"] == pytest.approx([0.0] * 9, abs=1e-9)

    def outcome(rows):
        return [{k: v for k, v in r.items() if k != "request_tpot_rel_errors"} for r in rows]

    averaged = validate(replace(config, sim_runs=3))  # seeds 0, 1, 2: plain decoding draws nothing
    assert averaged["sim_runs"] == 3 and outcome(averaged["rows"])[0] == outcome(out["rows"])[0]
    twice = validate(replace(config, bench_dirs=(tmp_path,) * 2))  # a "repeat" that is the same
    assert outcome(twice["rows"]) == outcome(out["rows"]) and twice["repeat_num_within_targets"] == 2
    assert len(twice["rows"][1]["request_tpot_rel_errors"]) == 18  # per request and sweep
    assert all(r["attainment_diff_pp"] == 0.0 for r in twice["repeat_rows"])


def test_run_timing_from_a_step_log():
    """Two steps: passes logged at twice the model's time, 3 ms and 5 ms of host time beside them."""
    from adaserve.engine.step_log import PassRecord, StepRecord
    from adaserve.sim.step_timing import predicted_pass_ms, run_timing

    cost = CostModel(LatencyCurve((1, 9), (10.0, 18.0), ms_per_logit_row=0.5), LatencyCurve((1,), (4.0,)))
    # 3 seqs, 9 tokens (a tree of 7 nodes + 2 decodes): 18 ms + 0.5 x (9 - 3) extra logits rows = 21 ms.
    tree = PassRecord("target", 9, 3, 0, 0, num_logit_rows=9, forward_ms=40.0, logits_ms=2.0)
    layer = PassRecord("draft", 2, 2, 0, 0, num_logit_rows=2, forward_ms=8.0)
    decode = PassRecord("target", 1, 1, 0, 0, num_logit_rows=1, forward_ms=20.0)
    assert (predicted_pass_ms(cost, tree), predicted_pass_ms(cost, layer), predicted_pass_ms(cost, decode)) == (
        21.0,
        4.0,
        10.0,
    )
    steps = [StepRecord(0.0, "adaserve", 53.0, [layer, tree]), StepRecord(1.0, "adaserve", 25.0, [decode])]
    timing = run_timing(steps, cost)
    assert timing.num_steps == 2 and timing.host_ms_per_step == pytest.approx(4.0)
    assert timing.speed_factor == pytest.approx(70.0 / 35.0)


def logged_steps(rows_and_host: list[tuple[int, int, float]], policy: str = "chain:4"):
    """Steps whose passes ran at twice a CostModel(10 ms target, 5 ms draft) and whose host time
    (outside the passes) is given, with their target and draft logits rows."""
    from adaserve.engine.step_log import PassRecord, StepRecord

    steps = []
    for target_rows, draft_rows, host_ms in rows_and_host:
        passes = [PassRecord("target", target_rows, target_rows, 0, 0, num_logit_rows=target_rows, forward_ms=20.0)]
        if draft_rows:
            passes.insert(
                0, PassRecord("draft", draft_rows, draft_rows, 0, 0, num_logit_rows=draft_rows, forward_ms=10.0)
            )
        steps.append(StepRecord(0.0, policy, host_ms + sum(p.forward_ms for p in passes), passes))
    return steps


# host = 1 ms + 0.5 per target row + 0.25 per draft row
HOST_TABLE = [(1, 0, 1.5), (4, 0, 3.0), (2, 8, 4.0), (3, 4, 3.5), (6, 12, 7.0)]


def test_host_model_fit():
    from adaserve.sim.step_timing import HostModel, fit_host_model

    host = fit_host_model(logged_steps(HOST_TABLE))
    assert (host.ms_per_step, host.ms_per_target_row, host.ms_per_draft_row) == pytest.approx((1.0, 0.5, 0.25))
    assert host(2, 4) == pytest.approx(3.0)
    # A term that would come out negative is dropped: host time that falls with draft rows.
    falling = fit_host_model(logged_steps([(1, 0, 2.0), (1, 4, 1.0), (2, 0, 3.0), (2, 8, 1.0)]))
    assert falling.ms_per_draft_row == 0.0 and falling.ms_per_step >= 0.0 and falling.ms_per_target_row >= 0.0
    assert isinstance(falling, HostModel)


@pytest.mark.parametrize("how, scale", [("host", 1.0), ("speed", 2.0)])
def test_validate_calibrates_each_policy_from_the_step_logs(tmp_path, how, scale):
    from dataclasses import asdict

    from adaserve.sim.validate import calibrated

    cost = CostModel(LatencyCurve((1,), (10.0,)), LatencyCurve((1,), (5.0,)))
    (tmp_path / "step_logs").mkdir()
    for policy, table in (("chain:4", HOST_TABLE[:3]), ("adaserve", HOST_TABLE[3:])):  # one fit over both
        lines = [json.dumps(asdict(s)) + "\n" for s in logged_steps(table, policy)]
        (tmp_path / "step_logs" / f"{policy.replace(':', '-')}.jsonl").write_text("".join(lines))
    config, info = calibrated(how, SimConfig(step_overhead_ms=7.0), "chain:4", tmp_path, {}, cost)
    assert (config.step_overhead_ms, config.host_ms_per_target_row, config.host_ms_per_draft_row) == pytest.approx(
        (1.0, 0.5, 0.25)
    )
    assert config.time_scale == pytest.approx(scale) and info["time_scale"] == pytest.approx(scale)
    assert calibrated("none", SimConfig(step_overhead_ms=7.0), "chain:4", tmp_path, {}, cost)[0].step_overhead_ms == 7.0
    with pytest.raises(ValueError, match="step logs"):
        calibrated("host", SimConfig(), "smartspec", tmp_path, {}, cost)
