"""The simulator: hand-computed timelines on fake cost and acceptance models, preemption, SLO
customization through the engine's own policies, acceptance models, roofline, bench replay."""

import json
import random

import pytest

from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.sim.acceptance import DrawnOffer, ParametricAcceptance, RecordedAcceptance, parse_acceptance, save_records
from adaserve.sim.config import SimConfig
from adaserve.sim.recorder import OfferRecord
from adaserve.sim.roofline import ADASERVE_A100_70B_TABLE, parse_cost_model
from adaserve.sim.run import simulate, unloaded_tpot_ms
from adaserve.sim.simulator import Simulator
from adaserve.sim.workloads import SimRequest, from_bench_result
from adaserve.slo import SLO


class Always:
    """The draft offers one child; the target picks it (hit=0) or not (hit=-1)."""

    def __init__(self, hit: int) -> None:
        self.hit = hit

    def source(self, category, prompt_key):
        return self

    def offers(self, depth, top_k, rng, num_nodes, on_path):
        return [DrawnOffer.of(OfferRecord(depth, [0.9], self.hit))] * num_nodes

    per_prompt = False


def flat_cost(verify_ms=10.0, draft_ms=5.0) -> CostModel:
    return CostModel(LatencyCurve((1,), (verify_ms,)), LatencyCurve((1,), (draft_ms,)) if draft_ms else None)


def one_request(max_tokens, prompt=32, slo=None):
    return [SimRequest(0.0, "coding", prompt, max_tokens, slo or SLO())]


def token_times(policy, acceptance, max_tokens, cost=None):
    sim = Simulator(SimConfig(policy=policy), cost or flat_cost(), acceptance)
    record = sim.run(one_request(max_tokens))[0]
    return [round(t, 6) for t in record.chunk_times]


def test_plain_decoding_timeline():
    # prefill (10 ms) yields the first token, then one 10 ms step per token
    assert token_times("none", None, 5) == [0.01, 0.02, 0.03, 0.04, 0.05]


def test_chain_timeline_when_every_draft_is_accepted():
    # step 2: draft = sync pass + 3 layer passes (4 x 5 ms) + verify 10 ms = 30 ms -> 4 accepted + bonus;
    # step 3: only 4 tokens of room left (max_tokens 11 - 6 - 1) -> 4 drafted, 5 tokens.
    times = token_times("chain:4", Always(0), 11)
    assert times == [0.01] + [0.04] * 5 + [0.07] * 5


def test_chain_timeline_when_no_draft_is_accepted():
    assert token_times("chain:4", Always(-1), 4) == [0.01, 0.04, 0.07, 0.10]


def test_preemption_recomputes_and_everything_finishes():
    workload = [SimRequest(0.001 * i, "chat", 40, 30, SLO()) for i in range(3)]
    small = Simulator(SimConfig(policy="none", kv_capacity_tokens=96), flat_cost(draft_ms=0), None)
    records = small.run(workload)
    assert [r.num_output_tokens for r in records] == [30, 30, 30]
    assert sum(req.num_preemptions for _, req in small.requests) > 0
    assert small.engine.kv.num_free_blocks == small.engine.kv.pool.num_blocks
    big = Simulator(SimConfig(policy="none"), flat_cost(draft_ms=0), None)
    big_records = big.run(workload)
    assert max(r.chunk_times[-1] for r in big_records) < max(r.chunk_times[-1] for r in records)


def test_a_request_that_can_never_fit_is_an_error():
    with pytest.raises(ValueError, match="never fits"):
        Simulator(SimConfig(policy="none", kv_capacity_tokens=64), flat_cost(), None).run(one_request(40, prompt=40))


def slo_cost() -> CostModel:
    return CostModel(LatencyCurve((1, 16, 64, 512), (100.0, 110.0, 200.0, 1000.0)), LatencyCurve((1, 512), (5.0, 20.0)))


def mixed_slo_workload():
    tight, loose = SLO(tpot_ms=40.0), SLO(tpot_ms=1e6)
    return [
        SimRequest(0.0, "coding" if i % 2 else "summarization", 64, 40, tight if i % 2 else loose) for i in range(8)
    ]


def test_adaserve_gives_tight_slo_requests_more_drafted_tokens():
    # The selection alone: 40 ms is out of reach of 100 ms steps, which the planner would demote.
    sim = Simulator(SimConfig(policy="adaserve-cap"), slo_cost(), ParametricAcceptance(top1=0.8))
    sim.run(mixed_slo_workload())

    def per_verification(tight: bool):
        stats = [r.spec_stats for item, r in sim.requests if (item.slo.tpot_ms == 40.0) == tight]
        return sum(s.num_proposed for s in stats) / sum(s.num_verifications for s in stats)

    assert per_verification(True) > 1.3 * per_verification(False)


def test_same_seed_same_result_different_seed_differs():
    acceptance = ParametricAcceptance(top1=0.6)
    runs = [
        simulate(SimConfig(policy="dynamic-tree", seed=s), slo_cost(), acceptance, mixed_slo_workload())
        for s in (0, 0, 1)
    ]
    assert runs[0]["categories"] == runs[1]["categories"]
    assert runs[0]["categories"] != runs[2]["categories"]


def test_unloaded_latency_is_the_plain_decoding_step():
    assert unloaded_tpot_ms(flat_cost(verify_ms=25.0), SimConfig()) == pytest.approx(25.0)


def test_recorded_acceptance_draws_by_depth_and_truncates_to_top_k():
    records = [OfferRecord(0, [0.7, 0.2, 0.1], 2), OfferRecord(1, [0.5, 0.4], 0)]
    model = RecordedAcceptance(records)
    rng = random.Random(0)
    assert model.offer(0, 8, rng).record == records[0]
    assert model.offer(5, 8, rng).record == records[1]  # deeper than recorded: the deepest depth's records
    assert model.offer(0, 2, rng).record == OfferRecord(0, [0.7, 0.2], -1)  # the hit child was not offered
    assert model.top1_acceptance() == {0: 0.0, 1: 1.0}


def test_recorded_acceptance_by_category_round_trip(tmp_path):
    """Tagged records serve requests of their category; other categories draw from all records."""
    records = [OfferRecord(0, [0.9], 0), OfferRecord(0, [0.6], -1), OfferRecord(0, [0.5], -1)]
    save_records(tmp_path / "r.jsonl", records, ["coding", "chat", "chat"])
    model = parse_acceptance(f"recorded:{tmp_path / 'r.jsonl'}")
    rng = random.Random(0)
    assert {model.offer(0, 4, rng, "coding").record.hit for _ in range(50)} == {0}
    assert {model.offer(0, 4, rng, "chat").record.hit for _ in range(50)} == {-1}
    assert {model.offer(0, 4, rng, "summarization").record.hit for _ in range(200)} == {0, -1}
    assert model.top1_acceptance("chat") == {0: 0.0} and model.top1_acceptance()[0] == pytest.approx(1 / 3)


def test_simulated_acceptance_follows_the_request_category():
    """Same arrivals, coding vs chat requests: the chat records (never accepted) cost more steps."""
    records = [OfferRecord(d, [0.9, 0.05], 0) for d in range(4)] + [OfferRecord(d, [0.9, 0.05], -1) for d in range(4)]
    acceptance = RecordedAcceptance(records, ["coding"] * 4 + ["chat"] * 4)
    steps = {}
    for category in ("coding", "chat"):
        workload = [SimRequest(0.0, category, 32, 32, SLO()) for _ in range(2)]
        sim = Simulator(SimConfig(policy="chain:4"), slo_cost(), acceptance)
        sim.run(workload)
        steps[category] = sim.num_steps
    assert steps["chat"] > 2 * steps["coding"]


def test_parametric_acceptance_follows_its_calibration():
    model = ParametricAcceptance(top1=0.5, calibration=1.2)
    rng = random.Random(1)
    offers = [model.offer(1, 4, rng) for _ in range(20000)]

    def p_top1(probs):  # min(1, c x q), scaled down when the children's picks sum past 1
        picks = [min(1.0, 1.2 * q) for q in probs]
        return picks[0] / max(1.0, sum(picks))

    records = [o.record for o in offers]
    expected = sum(p_top1(r.draft_probs) for r in records) / len(records)
    observed = sum(o.record.hit == 0 for o in offers) / len(offers)
    assert observed == pytest.approx(expected, abs=0.015)
    assert all(len(r.draft_probs) == 4 and sum(r.draft_probs) <= 1 + 1e-9 for r in records)
    # Offered most likely first (the Beta draw may fall below the next child's share); the target's
    # choice is the token of the record's hit child.
    assert all(o.logprobs == sorted(o.logprobs, reverse=True) for o in offers)
    assert any(o.token_ids[0] != 1 for o in offers)
    assert all(o.target_choice == (o.record.hit + 1 if o.record.hit >= 0 else -1) for o in offers)


@pytest.mark.parametrize("spec", ["recorded:/nonexistent", "parametric:top1=2", "parametric:bogus=1", "magic"])
def test_bad_acceptance_specs_are_clear_errors(spec):
    with pytest.raises(ValueError):
        parse_acceptance(spec)


def test_roofline_worked_example_and_published_table():
    cost = parse_cost_model("roofline:a100x4:llama-3.1-70b:llama-3.2-1b")
    assert cost.verify_ms(1) == pytest.approx(32.7, abs=0.1)  # 24.7 ms of weights + 80 layers x 0.1 ms
    assert cost.verify_ms(1024) == pytest.approx(173.5, abs=0.5)  # compute-bound
    assert cost.verify_ms(1) < cost.verify_ms(1, 100_000)  # KV reads cost
    table = parse_cost_model("table:adaserve-a100-70b")
    assert [table.verify_ms(n) for n in ADASERVE_A100_70B_TABLE] == list(ADASERVE_A100_70B_TABLE.values())
    assert table.verify_ms(1) == pytest.approx(cost.verify_ms(1))  # below the table: the roofline
    assert table.draft_ms(1) < 5.0
    with pytest.raises(ValueError):
        parse_cost_model("roofline:tpu:llama-3.1-70b")


def test_bench_result_replay(tmp_path):
    rec = lambda t, cat, n: {
        "arrival_time": t,
        "category": cat,
        "slo": {"tpot_ms": 300.0, "ttft_ms": None},
        "server_usage": {"prompt_tokens": n},
    }
    path = tmp_path / "point.json"
    path.write_text(
        json.dumps({"args": {"output_tokens": 48}, "records": [rec(105.5, "chat", 80), rec(100.0, "coding", 200)]})
    )
    assert from_bench_result(path) == [
        SimRequest(0.0, "coding", 200, 48, SLO(tpot_ms=300.0)),
        SimRequest(5.5, "chat", 80, 48, SLO(tpot_ms=300.0)),
    ]


def test_simulated_step_counts_host_time_per_logits_row():
    """Plain decoding of one request: each step is the 10 ms pass + 2 ms + 0.5 ms for its one row."""
    config = SimConfig(policy="none", step_overhead_ms=2.0, host_ms_per_target_row=0.5)
    result = simulate(config, flat_cost(10.0, 0.0), None, one_request(5))
    assert result["categories"]["all"]["tpot_ms"]["median"] == pytest.approx(12.5)


def test_simulated_decodes_pay_for_their_attention_groups_padding():
    """Decodes over 300 and 100 cached tokens attend as one group padded to 301 KV positions: the
    shorter one's 200 extra positions are read like context (0.1 ms each here)."""
    cost = CostModel(LatencyCurve((1, 1024), (10.0, 10.0), ms_per_context_token=0.1))
    workload = [SimRequest(0.0, "coding", 300, 3, SLO()), SimRequest(0.0, "chat", 100, 3, SLO())]
    result = simulate(SimConfig(policy="none"), cost, None, workload)
    # Decode steps read 400 and 402 cached tokens plus 200 padded: 10 + 0.1 x (401 + 200) ms on average.
    assert result["categories"]["all"]["tpot_ms"]["median"] == pytest.approx(70.1)


def test_simulated_draft_passes_have_the_shapes_the_engine_logs():
    """A 2-wide, 3-deep dynamic tree for one request of 40 committed tokens, the draft synced to 37:
    the sync feeds 3 tokens after 37 (one logits row), then layer 1 (2 nodes) after the 40 tokens,
    layer 2 (2 nodes) after 40 + the 2 of layer 1; layer 3 is drafted from layer 2's logits, not fed."""
    from adaserve.request import Request
    from adaserve.sampling import SamplingParams
    from adaserve.sim.proposer import SimProposer
    from adaserve.spec.policies import make_policy

    class TwoChildren(Always):
        def offers(self, depth, top_k, rng, num_nodes, on_path):
            return [DrawnOffer.of(OfferRecord(depth, [0.6, 0.3], 0))] * num_nodes

    proposer = SimProposer(TwoChildren(0), random.Random(0))
    request = Request("r", list(range(40)), SamplingParams(max_tokens=8), arrival_time=0.0)
    proposer.add("r", "coding")
    proposer.synced["r"] = 37
    proposer.propose([request], make_policy("dynamic-tree:4:3:2"))
    shapes = [
        (p.num_tokens, p.num_seqs, p.num_context_tokens, p.num_context_pairs, p.num_logit_rows)
        for p in proposer.draft_passes
    ]
    assert shapes == [(3, 1, 37, 2 * 37, 1), (2, 1, 40, 40, 2), (2, 1, 42, 42, 2)]


def test_the_simulate_command_line_becomes_configs():
    from pathlib import Path

    from adaserve.bench.workload import WorkloadSpec
    from adaserve.cli import build_parser
    from adaserve.sim.cli import record_config, run_config, validate_config
    from adaserve.sim.commands import ModelSources, SimRunConfig
    from adaserve.sim.record import RecordConfig
    from adaserve.sim.validate import ValidateConfig

    def parse(line: str):
        return build_parser().parse_args(["simulate", *line.split()])

    assert validate_config(parse("validate --bench-dir a b --seed 3 --sim-runs 2 --cost table:x")) == ValidateConfig(
        bench_dirs=(Path("a"), Path("b")),
        sim=SimConfig(seed=3),
        models=ModelSources(cost="table:x"),
        sim_runs=2,
    )
    assert run_config(
        parse("run --policies none,adaserve --values 1,2 --num-requests 9 --slo-class chat=tpot:9ms")
    ) == (
        SimRunConfig(
            policies=("none", "adaserve"),
            values=(1.0, 2.0),
            workload=WorkloadSpec(num_requests=9),
            slo_classes=("chat=tpot:9ms",),
        )
    )
    assert record_config(parse("record --record-policy chain:2,chain:3 --from-bench r.json")) == RecordConfig(
        policies=("chain:2", "chain:3"), from_bench=(Path("r.json"),)
    )
