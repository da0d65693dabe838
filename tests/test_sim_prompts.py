"""Acceptance recorded per prompt: bench results name their prompts (or have them rebuilt from their
arguments), records carry them, and the simulator draws each request's offers from its own prompt."""

import json
import random
from dataclasses import asdict

import pytest

from adaserve.bench import run as bench_run
from adaserve.bench.client import BenchRecord, prompt_key
from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.sim.acceptance import MIN_PROMPT_RECORDS_PER_DEPTH, RecordedAcceptance, parse_acceptance, save_records
from adaserve.sim.config import SimConfig
from adaserve.sim.recorder import OfferRecord
from adaserve.sim.simulator import Simulator
from adaserve.sim.workloads import SimRequest, from_bench_result
from adaserve.slo import SLO

FAKE_PROMPTS = {"coding": ["def add(a, b):", "def sub(a, b):"], "chat": ["hello"], "summarization": ["a long text"]}


def chain(depths: range, hit: int) -> list[OfferRecord]:
    return [OfferRecord(d, [0.9, 0.05], hit) for d in depths]


def test_a_prompt_draws_its_own_records_and_others_fall_back_to_the_category(tmp_path):
    records = chain(range(2), 0) + chain(range(2), -1) + chain(range(2), 0)
    save_records(tmp_path / "r.jsonl", records, ["coding"] * 6, ["p-good"] * 2 + ["p-bad"] * 2 + [""] * 2)
    model = parse_acceptance(f"recorded:{tmp_path / 'r.jsonl'}")
    rng = random.Random(0)
    assert model.per_prompt and set(model.prompt_pools) == {"p-good", "p-bad"}
    assert {model.offer(1, 4, rng, "coding", "p-good").record.hit for _ in range(50)} == {0}
    assert {model.offer(1, 4, rng, "coding", "p-bad").record.hit for _ in range(50)} == {-1}
    assert {model.offer(1, 4, rng, "coding", "p-unknown").record.hit for _ in range(200)} == {0, -1}  # the category's
    assert not RecordedAcceptance(records).per_prompt


def test_a_prompts_thin_depths_draw_from_the_deepest_well_recorded_depth():
    # depth 0 and 1 have enough records, depth 2 one: depths >= 2 draw from depth 1
    n = MIN_PROMPT_RECORDS_PER_DEPTH
    records = [OfferRecord(0, [0.5], 0)] * n + [OfferRecord(1, [0.6], -1)] * n + [OfferRecord(2, [0.7], 0)]
    model = RecordedAcceptance(records, ["chat"] * len(records), ["p"] * len(records))
    rng = random.Random(0)
    assert {model.offer(2, 4, rng, "chat", "p").record.draft_probs[0] for _ in range(20)} == {0.6}
    assert {model.offer(5, 4, rng, "chat", "p").record.draft_probs[0] for _ in range(20)} == {0.6}
    assert model.offer(2, 4, rng, "chat").record.draft_probs[0] == 0.7  # the category pool keeps every depth


def test_the_simulator_draws_acceptance_per_prompt():
    """Same category, two prompts: the one whose records never accept takes far more steps."""
    records = chain(range(4), 0) * MIN_PROMPT_RECORDS_PER_DEPTH + chain(range(4), -1) * MIN_PROMPT_RECORDS_PER_DEPTH
    keys = ["good"] * (len(records) // 2) + ["bad"] * (len(records) // 2)
    acceptance = RecordedAcceptance(records, ["coding"] * len(records), keys)
    cost = CostModel(LatencyCurve((1,), (10.0,)), LatencyCurve((1,), (5.0,)))
    steps = {}
    for key in ("good", "bad"):
        sim = Simulator(SimConfig(policy="chain:4"), cost, acceptance)
        sim.run([SimRequest(0.0, "coding", 32, 32, SLO(), key)])
        steps[key] = sim.num_steps
    assert steps["bad"] > 3 * steps["good"]


def _bench_result(tmp_path, monkeypatch, with_keys: bool):
    """A bench result as run_bench writes it, for a workload built from fake prompts."""
    monkeypatch.setattr(bench_run, "category_prompts", lambda c: FAKE_PROMPTS[c])
    spec_args = {
        "rate": 2.0,
        "num_requests": 6,
        "duration": None,
        "arrival": "poisson",
        "cv": 2.0,
        "pieces": "30:0.25,30:1.0",
        "urgent_share": None,
        "output_tokens": 16,
        "slo_scale": 1.0,
        "seed": 3,
        "workload_file": None,
    }
    requests = bench_run.build_workload(
        bench_run.workload_spec(spec_args), 100.0, {c: FAKE_PROMPTS[c] for c in FAKE_PROMPTS}
    )
    records = [
        BenchRecord(
            q.category,
            q.slo,
            50.0 + q.arrival_s,
            50.5 + q.arrival_s,
            [50.5 + q.arrival_s],
            16,
            server_usage={"prompt_tokens": len(q.messages[0]["content"])},
            prompt_key=q.prompt_key if with_keys else "",
        )
        for q in requests
    ]
    result = {"unloaded_tpot_ms": 100.0, "args": spec_args, "records": [asdict(r) for r in records]}
    path = tmp_path / "point.json"
    path.write_text(json.dumps(result))
    return path, requests


@pytest.mark.parametrize("with_keys", [True, False])
def test_bench_results_name_their_prompts_or_have_them_rebuilt(tmp_path, monkeypatch, with_keys):
    path, requests = _bench_result(tmp_path, monkeypatch, with_keys)
    workload = from_bench_result(path, name_prompts=True)
    assert [w.prompt_key for w in workload] == [prompt_key(q.messages) for q in requests]
    assert {w.prompt_key for w in workload} <= {
        prompt_key([{"role": "user", "content": p}]) for ps in FAKE_PROMPTS.values() for p in ps
    }
    if not with_keys:
        assert {w.prompt_key for w in from_bench_result(path)} == {""}  # not asked: not rebuilt


@pytest.mark.parametrize("change", ["category", "prompt length"])
def test_a_bench_result_its_arguments_do_not_rebuild_is_refused(tmp_path, monkeypatch, change):
    path, requests = _bench_result(tmp_path, monkeypatch, with_keys=False)
    result = json.loads(path.read_text())
    if change == "category":
        result["records"][0]["category"] = "translation"  # not what the arguments build
    else:  # one of two requests that share a rebuilt prompt was longer: it was another prompt
        keys = [q.prompt_key for q in requests]
        i = next(i for i, k in enumerate(keys) if keys.count(k) > 1)
        result["records"][i]["server_usage"]["prompt_tokens"] += 1
    path.write_text(json.dumps(result))
    with pytest.raises(ValueError, match="do not match"):
        from_bench_result(path, name_prompts=True)


def test_recording_from_bench_runs_each_distinct_prompt_once(tmp_path, monkeypatch):
    from adaserve.sim.record import _bench_prompts

    path, requests = _bench_result(tmp_path, monkeypatch, with_keys=True)
    prompts = _bench_prompts([path, path])  # (a repeat of the same run adds nothing)
    assert sorted(q.prompt_key for q in prompts) == sorted({q.prompt_key for q in requests})
    assert all(q.max_tokens == 16 for q in prompts)


def test_a_node_on_the_targets_path_replays_the_record_of_its_output_position():
    records = [OfferRecord(0, [0.9, 0.1], 0, position=p) for p in range(1, 6)] + [OfferRecord(2, [0.8, 0.2], 1, 6)]
    model = RecordedAcceptance(records, ["chat"] * 6, ["p"] * 6)
    rng = random.Random(0)
    assert model.offer(0, 4, rng, "chat", "p", position=6).record == records[-1]  # its position, whatever the depth
    assert model.offer(5, 1, rng, "chat", "p", position=6).record == OfferRecord(2, [0.8], -1, 6)  # cut to top-1
    assert model.offer(0, 4, rng, "chat", "p", position=9).record.position in range(1, 7)  # not recorded: the pool


def test_a_frontiers_offers_are_the_nodes_offers_drawn_one_by_one():
    records = [OfferRecord(1, [0.9 - p / 100, 0.05], p % 2 - 1, position=p) for p in range(1, 30)]
    model = RecordedAcceptance(records, ["chat"] * len(records), ["p"] * len(records))
    for on_path in ({}, {2: 7}, {0: 99}):  # none, a recorded position, an unrecorded one (the pool)
        batch = model.source("chat", "p").offers(1, 2, random.Random(3), 5, on_path)
        rng = random.Random(3)
        assert batch == [model.offer(1, 2, rng, "chat", "p", on_path.get(i, -1)) for i in range(5)]


@pytest.mark.parametrize("seed, miss", [(0, -1), (1, -1), (2, -1), (0, 1)])
def test_the_simulator_replays_a_prompts_trace_whatever_the_seed(seed, miss):
    """Output position 3 is the only one where the target does not pick the draft's top child
    (none of the offered children, or the second one, which chain:4 does not keep). 11 tokens: the
    prefill gives token 0; step 1 accepts positions 1, 2 and takes the bonus at 3; step 2 accepts
    4..7 plus the bonus 8; step 3 has room for one draft (9) plus the bonus (10)."""
    trace = [OfferRecord(0, [0.9, 0.05], miss if p == 3 else 0, position=p) for p in range(1, 11)]
    acceptance = RecordedAcceptance(trace, ["coding"] * len(trace), ["p"] * len(trace))
    sim = Simulator(
        SimConfig(policy="chain:4", seed=seed),
        CostModel(LatencyCurve((1,), (10.0,)), LatencyCurve((1,), (5.0,))),
        acceptance,
    )
    record = sim.run([SimRequest(0.0, "coding", 32, 11, SLO(), "p")])[0]
    tokens_per_step = [record.chunk_times.count(t) for t in sorted(set(record.chunk_times))]
    assert tokens_per_step == [1, 3, 5, 2]


def test_a_second_recording_policy_fills_the_positions_the_first_missed(tmp_path, monkeypatch, smollm2_dir):
    """Self-drafting accepts every tree whole, so each bonus token's position is predicted by no
    offer: depth 3 misses every 4th position, depth 4 every 5th; together they cover all of them."""
    from adaserve.sim import record as record_module

    messages = [{"role": "user", "content": "Count from one to twenty."}]
    monkeypatch.setattr(record_module, "_batches", lambda args: iter([([messages], "chat", "p", 16)]))

    def traces(policies: str) -> dict[int, OfferRecord]:
        out = tmp_path / f"{policies}.jsonl"
        record_module.record(
            record_module.RecordConfig(
                model=str(smollm2_dir),
                draft="smollm2-135m",
                policies=tuple(policies.split(",")),
                out=out,
                draft_int4=False,  # the target's own weights: every tree accepted whole
            )
        )
        model = RecordedAcceptance.load(out)
        return model.traces["p"], sum(1 for line in out.read_text().splitlines() if line)

    one, _ = traces("dynamic-tree:3:3:1")
    both, num_records = traces("dynamic-tree:3:3:1,dynamic-tree:4:4:1")
    assert set(range(1, 16)) - set(one)  # the first policy alone leaves gaps
    assert set(both) == set(range(1, 16)) and num_records == 15  # the second fills exactly those


def test_nodes_off_the_targets_path_draw_from_the_records_made_off_a_path(tmp_path):
    on = [OfferRecord(d, [0.9, 0.05], 0, position=d + 1) for d in range(3)] * 2
    off = [OfferRecord(d, [0.3, 0.2], -1, off_path=True) for d in range(3)] * 2
    save_records(tmp_path / "r.jsonl", on + off, ["chat"] * 12, ["p"] * 12)
    model = parse_acceptance(f"recorded:{tmp_path / 'r.jsonl'}")
    source, rng = model.source("chat", "p"), random.Random(0)
    assert {o.record.draft_probs[0] for o in source.offers(1, 2, rng, 20, {})} == {0.3}
    path = source.offers(1, 2, rng, 3, {1: 40})  # an unrecorded position: the on-path pool
    assert [o.record.draft_probs[0] for o in path] == [0.3, 0.9, 0.3]
    assert model.top1_acceptance("chat") == {0: 1.0, 1: 1.0, 2: 1.0}  # off-path records have no hit
    only_on = RecordedAcceptance(on, ["chat"] * 6, ["p"] * 6).source("chat", "p")
    assert {o.record.draft_probs[0] for o in only_on.offers(1, 2, rng, 20, {})} == {0.9}  # none recorded: the pool
