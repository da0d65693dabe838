"""`--protocol paper`: the artifact's AdaServe settings and the per-policy sequence limits."""

from adaserve.bench.protocol import paper_policies, paper_seqs
from adaserve.cli import build_parser
from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.sim.cli import run_config
from adaserve.sim.config import SimConfig
from adaserve.spec.registry import choose_policy

COST = CostModel(LatencyCurve((1, 64, 1024), (30.0, 40.0, 400.0)), LatencyCurve((1, 64), (5.0, 8.0)))


def test_adaserve_paper_is_the_artifacts_adaserve():
    choice = choose_policy("adaserve-paper", COST)
    assert not choice.planner and not choice.slo_token_budget  # no planner, no prefill cap
    policy = choice.spec
    assert policy.verify_budget == 512 and policy.shape.min_depth == 4 and policy.shape.max_width == 3
    assert policy.shape.depth_rule == "paper"
    assert choose_policy("adaserve", COST).spec.verify_budget == COST.verify_budget()  # ours: profiled


def test_paper_protocol_maps_policies_and_sequence_limits():
    assert paper_policies(["none", "adaserve", "smartspec"]) == ["none", "adaserve-paper", "smartspec"]
    assert [paper_seqs(p) for p in ("adaserve-paper", "adaserve", "chain:4")] == [64, 64, 512]
    config = SimConfig(max_num_seqs=256, max_num_seqs_by_policy=(("adaserve-paper", 64),))
    assert config.for_policy("adaserve-paper").max_num_seqs == 64
    assert config.for_policy("none").max_num_seqs == 256 and config.for_policy("none").policy == "none"


def test_simulate_protocol_paper_flag():
    args = build_parser().parse_args(["simulate", "run", "--protocol", "paper", "--policies", "none,adaserve"])
    config = run_config(args)
    assert config.policies == ("none", "adaserve-paper")
    assert dict(config.sim.max_num_seqs_by_policy) == {"none": 512, "adaserve-paper": 64}
    assert config.workload.prefill_ms_per_token is None  # TPOT only


def test_bench_sweep_protocol_paper_flag():
    from adaserve.bench.sweep import sweep_config

    args = build_parser().parse_args(["bench", "sweep", "--protocol", "paper", "--policies", "chain:4,adaserve"])
    config = sweep_config(args)
    assert config.policies == ("chain:4", "adaserve-paper") and config.protocol == "paper"
    assert not config.bench.ttft
