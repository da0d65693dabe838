"""SLO-aware policies in the engine (SmolLM2): a tight and a loose request run together, the tight
one gets more drafted tokens verified per iteration, and every policy's greedy output is plain greedy."""

import pytest

from adaserve import LLM, SamplingParams
from adaserve.sched.cost_model import CostModel, LatencyCurve

PROMPT = "<|im_start|>user\nWrite a Python function that sums a list.<|im_end|>\n<|im_start|>assistant\n"
OTHER = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"


@pytest.fixture(scope="module")
def cost_path(tmp_path_factory):
    # SmolLM2-135M as measured by benchmarks/engine_step.py here; a 3-layer draft is ~10x cheaper.
    cost = CostModel(
        LatencyCurve((1, 8, 16, 32, 64), (35.0, 40.0, 52.0, 84.0, 141.0)),
        LatencyCurve((1, 16, 64), (5.0, 7.0, 16.0)),
    )
    path = tmp_path_factory.mktemp("cost") / "smollm2.json"
    cost.save(path)
    return str(path)


@pytest.fixture(scope="module")
def plain(smollm2_dir):
    llm = LLM(str(smollm2_dir))
    return [o.token_ids for o in llm.generate([PROMPT, OTHER], SamplingParams(max_tokens=40))]


def make_llm(smollm2_dir, cost_path, policy, draft_num_layers=30):
    return LLM(
        str(smollm2_dir),
        draft=str(smollm2_dir),
        draft_num_layers=draft_num_layers,
        spec_policy=policy,
        cost_model=cost_path,
        max_num_batched_tokens=256,
    )


def test_tight_slo_gets_more_tokens_verified_than_loose(smollm2_dir, cost_path, plain):
    # The selection alone (adaserve-cap: no planner, which would demote an unreachable SLO).
    llm = make_llm(smollm2_dir, cost_path, "adaserve-cap")
    tight = SamplingParams(max_tokens=40, slo={"tpot_ms": 1.0})  # unreachable: always behind its line
    loose = SamplingParams(max_tokens=40, slo={"tpot_ms": 1e6})
    engine = llm.engine
    r_tight = engine.add_request(PROMPT, tight)
    r_loose = engine.add_request(PROMPT, loose)
    while engine.has_unfinished:
        engine.step()
    assert r_tight.output_ids == plain[0] and r_loose.output_ids == plain[0]
    per_verify = [r.spec_stats.num_proposed / r.spec_stats.num_verifications for r in (r_tight, r_loose)]
    assert per_verify[0] > per_verify[1], per_verify
    assert engine.kv.num_free_blocks == engine.kv.pool.num_blocks


def test_the_planner_demotes_an_unreachable_slo_and_serves_it_to_the_end(smollm2_dir, cost_path, plain):
    llm = make_llm(smollm2_dir, cost_path, "adaserve")
    unreachable = SamplingParams(max_tokens=40, slo={"tpot_ms": 1.0})
    loose = SamplingParams(max_tokens=40, slo={"tpot_ms": 1e6})
    engine = llm.engine
    r_unreachable, r_loose = engine.add_request(PROMPT, unreachable), engine.add_request(PROMPT, loose)
    while engine.has_unfinished:
        engine.step()
    assert r_unreachable.best_effort and not r_loose.best_effort
    assert r_unreachable.output_ids == plain[0] and r_loose.output_ids == plain[0]


@pytest.mark.parametrize("policy", ["adaserve", "adaserve-cap", "adaserve-equal", "smartspec", "chunked"])
def test_slo_policies_keep_greedy_output(smollm2_dir, cost_path, plain, policy):
    # The whole model as its own draft: the 3-layer one is accepted so rarely that adaserve, judging
    # each depth by what it yielded, soon stops drafting, and acceptance would go untested.
    llm = make_llm(smollm2_dir, cost_path, policy, draft_num_layers=30)
    params = [SamplingParams(max_tokens=40, slo={"tpot_ms": 30.0}), SamplingParams(max_tokens=40)]
    outs = llm.generate([PROMPT, OTHER], params)
    assert [o.token_ids for o in outs] == plain
    if policy != "chunked":
        assert llm.engine.spec.stats.totals.num_accepted > 0


def test_ttft_deadline_orders_admission(smollm2_dir):
    llm = LLM(str(smollm2_dir), max_num_seqs=1)
    engine = llm.engine
    first = engine.add_request(OTHER, SamplingParams(max_tokens=4))
    order = [out.request_id for out in engine.step() if out.finished]  # first is admitted
    late = engine.add_request(OTHER, SamplingParams(max_tokens=4))
    urgent = engine.add_request(OTHER, SamplingParams(max_tokens=4, slo={"ttft_ms": 1.0}))
    while engine.has_unfinished:
        for out in engine.step():
            if out.finished:
                order.append(out.request_id)
    assert order == [first.request_id, urgent.request_id, late.request_id]
