"""The SLO step planner: hand-made cost models and deadlines on a fake clock (planner tables), then
the whole engine on a simulated runner (demotion, refusal, properties)."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaserve.engine.core import EngineCore
from adaserve.request import FinishReason, Request
from adaserve.sampling import SamplingParams
from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.sched.planner import StepLoad, StepPlanner
from adaserve.sim.acceptance import ParametricAcceptance
from adaserve.sim.config import SimConfig
from adaserve.sim.proposer import SimProposer
from adaserve.sim.runner import SYNTHETIC_TOKEN, SimClock, SimRunner
from adaserve.slo import SLO
from adaserve.spec.registry import choose_policy

# A pass of n tokens takes 9 + n ms: 10 ms for one token, 1 ms per further token.
COST = CostModel(LatencyCurve((1, 1001), (10.0, 1010.0)), LatencyCurve((1, 1001), (2.0, 202.0)))
BLOCK = 16


def planner(max_tokens=512, recovery_tokens=1, tpot_headroom=1.0, demote_at="batch") -> StepPlanner:
    """recovery_tokens=1: a running request must be back on its TPOT line right after the step;
    tpot_headroom=1.0: the plans keep the TPOT itself (the tables' arithmetic stays exact)."""
    return StepPlanner(COST, max_tokens, BLOCK, recovery_tokens, tpot_headroom, demote_at=demote_at)


def decoding(decoded: int, since_first_s: float, tpot_ms=50.0, max_tokens=100, now=10.0) -> Request:
    """A running request that has decoded `decoded` tokens after its first, `since_first_s` ago."""
    r = Request("d", [1] * 20, SamplingParams(max_tokens=max_tokens, slo=SLO(tpot_ms=tpot_ms)), arrival_time=0.0)
    r.output_ids = [1] * (decoded + 1)
    r.num_computed_tokens = r.num_tokens - 1
    r.first_token_time = now - since_first_s
    return r


def waiting(rid: str, prompt: int, ttft_ms: float, arrival=10.0, reject=False) -> Request:
    params = SamplingParams(slo=SLO(ttft_ms=ttft_ms), slo_policy="reject" if reject else "best_effort")
    return Request(rid, [1] * prompt, params, arrival_time=arrival)


@pytest.mark.parametrize(
    "decoded, since_first_s, slack_ms",
    [
        (10, 0.5, 50.0),  # on its line: one TPOT
        (10, 0.25, 300.0),  # ahead of it (speculation): (10 + 1) x 50 - 250
        (0, 0.0, 50.0),  # just got its first token
    ],
)
def test_prefill_fills_exactly_the_tightest_slack(decoded, since_first_s, slack_ms):
    r = decoding(decoded, since_first_s)
    plan = planner().plan(10.0, [r], [], StepLoad(1))
    cap = plan.limits.max_prefill_tokens
    # The step with the cap fits the running request's slack; one token more would not.
    assert COST.verify_ms(1 + cap, r.num_computed_tokens, 1) <= slack_ms < COST.verify_ms(2 + cap, 20, 1)
    assert plan.limits.max_step_tokens == 1 + cap and not plan.demote and not plan.refuse


def test_a_long_step_may_be_made_good_over_the_recovery_tokens():
    """As the planner's worked example: tpot 50 ms, 10 tokens in 0.375 s, 2 tokens a step, 13 ms
    decode steps (trees of 4 tokens), back on the line within 4 tokens -> 700 - 375 - 13 = 312 ms
    of slack (plain steps of 10 ms would leave 700 - 375 - 3 x 10 = 295; back on the line right
    after the step: 550 - 375 = 175 ms)."""
    r = decoding(10, 0.375)
    r.spec_stats.num_verifications, r.spec_stats.num_accepted = 5, 5  # 2 tokens per verification
    load = StepLoad(4, 1)
    w = waiting("w", 100, ttft_ms=5000)  # a prompt with a deadline it makes either way
    plan = planner(recovery_tokens=4).plan(10.0, [r], [w], load)
    assert plan.limits.max_prefill_tokens == COST.target.max_tokens_within(312.0, 30, 512) - 4 == 299
    assert plan.limits.max_step_tokens == 303  # the selection may fill the same 312 ms
    assert planner(recovery_tokens=1).plan(10.0, [r], [w], load).limits.max_prefill_tokens == 175 - 9 - 4
    w.best_effort = True  # a best-effort prompt alone gets one step's slack, the selection still all
    plan = planner(recovery_tokens=4).plan(10.0, [r], [w], load)
    assert (plan.limits.max_prefill_tokens, plan.limits.max_step_tokens) == (175 - 9 - 4, 303)


def test_a_slow_tree_step_does_not_demote_a_request_that_plain_steps_keep():
    """Trees of 31 tokens after 100 ms of drafting: 140 ms for 2 tokens, 70 ms a token, over its
    50 ms TPOT. Plain steps of 10 ms keep it, so it is not lost: the policy can stop drafting."""
    r = decoding(0, 0.0)
    load = StepLoad(31, 1, draft_ms=100.0, mean_tokens_per_step=2.0)
    plan = planner(recovery_tokens=4).plan(10.0, [r], [], load)
    assert not plan.demote
    assert plan.limits.max_new_requests > 0  # plain steps leave room to start more


def test_a_prompt_due_soon_may_spend_all_the_slack_a_running_request_has_left():
    """On its line, r allows 50 ms now (40 prompt tokens, 0.8 a ms: 500 ms for w's 400) but ~3.6 s
    by its max_tokens; w is due in 450 ms, which full steps (~0.98 tokens a ms) make: w gets them."""
    r, w = decoding(10, 0.5), waiting("w", 400, ttft_ms=450)
    plan = planner().plan(10.0, [r], [w], StepLoad(1, 1))
    assert plan.limits.max_prefill_tokens == 511 and not plan.demote
    assert planner().plan(10.0, [r], [], StepLoad(1, 1)).limits.max_prefill_tokens == 40  # nothing due: 50 ms


def test_new_requests_start_only_while_decoding_stays_within_every_tpot():
    # r: 10 of 19 tokens decoded in 0.5 s at 50 ms: the 9 left may take 450 ms, its next 8 decode
    # steps at most 56.25 ms each. Each new request adds a token (1 ms) to them: 46 fit.
    r = decoding(10, 0.5, max_tokens=20)
    plan = planner().plan(10.0, [r], [], StepLoad(1, 1))
    assert plan.limits.max_new_requests == 46
    assert COST.verify_ms(1 + 46) <= 56.25 < COST.verify_ms(1 + 47)


def test_without_running_slos_nothing_is_capped():
    assert planner().plan(10.0, [], [waiting("w", 100, ttft_ms=5000)], StepLoad(0)).limits.max_prefill_tokens is None


def test_a_prompt_still_progresses_when_a_running_request_has_no_slack():
    r = decoding(10, 0.56)  # 10 ms behind its line: it needs its step now, but prompts still move
    plan = planner().plan(10.0, [r], [], StepLoad(1, 1))
    assert plan.limits.max_prefill_tokens == BLOCK and not plan.demote  # (it can catch up by max_tokens)


# A GPU-like cost: 16 more tokens cost next to nothing beside a 10 ms step.
CHEAP_PROMPTS = CostModel(LatencyCurve((1, 1001), (10.0, 20.0)), LatencyCurve((1, 1001), (2.0, 4.0)))


@pytest.mark.parametrize(
    "cost, prompt_ttft_ms, expected",
    [
        (COST, 5000.0, "none"),  # a block (16 ms) costs more than the step (10 ms); 4.9 s to spare: waits
        (COST, 110.0, "some"),  # ~102 ms of prefill at full steps: a step later it would be late
        (COST, None, "block"),  # no deadline: never deferred (it could wait for ever)
        (CHEAP_PROMPTS, 5000.0, "block"),  # a block is cheap: it runs, as it always did
    ],
)
def test_a_prompt_with_time_to_spare_waits_while_a_block_would_break_a_tpot(cost, prompt_ttft_ms, expected):
    r = decoding(10, 0.56)  # 10 ms behind its line: its slack funds no prompt tokens
    w = waiting("w", 100, ttft_ms=prompt_ttft_ms)
    cap = StepPlanner(cost, 512, BLOCK, 1, 1.0).plan(10.0, [r], [w], StepLoad(1, 1)).limits.max_prefill_tokens
    assert {"none": cap == 0, "some": cap >= BLOCK, "block": cap == BLOCK}[expected], cap
    no_deferral = StepPlanner(cost, 512, BLOCK, 1, 1.0, defer_prompts=False)
    assert no_deferral.plan(10.0, [r], [w], StepLoad(1, 1)).limits.max_prefill_tokens >= BLOCK


def test_the_draft_passes_count_against_the_slack():
    r = decoding(10, 0.25, max_tokens=13)  # 300 ms of slack; 100 of them drafting
    assert planner().plan(10.0, [r], [], StepLoad(1, draft_ms=100.0)).limits.max_prefill_tokens == 190


def test_of_two_prompts_that_cannot_both_be_on_time_the_longer_is_demoted():
    # No running request: 512-token steps of 521 ms, ~0.98 prompt tokens per ms. Earliest deadline
    # first, b (100 tokens, due in 550 ms) then a (500 tokens, due in 600 ms): a would end at ~611 ms.
    a, b = waiting("a", 500, ttft_ms=600), waiting("b", 100, ttft_ms=550)
    plan = planner().plan(10.0, [], [a, b], StepLoad(0))
    assert plan.demote == [a] and not plan.refuse


def test_dropping_the_longest_keeps_more_requests_on_time():
    # a is due first but long; b and c are short: dropping a lets both b and c make it.
    a, b, c = waiting("a", 500, ttft_ms=520), waiting("b", 100, ttft_ms=600), waiting("c", 100, ttft_ms=650)
    assert planner().plan(10.0, [], [a, b, c], StepLoad(0)).demote == [a]


def test_a_request_past_its_deadline_is_refused_if_it_asked_to_be():
    late = waiting("late", 50, ttft_ms=100, arrival=9.0, reject=True)  # due at 9.1 s, now 10 s
    ok = waiting("ok", 50, ttft_ms=5000)
    plan = planner().plan(10.0, [], [late, ok], StepLoad(0))
    assert plan.refuse == [late] and not plan.demote


def test_an_unattainable_tpot_is_demoted_and_leaves_the_slack_to_the_others():
    lost = decoding(2, 2.0, max_tokens=11)  # 2 s for 2 tokens, 10 at 50 ms allowed: 0.5 s in all
    fine = decoding(10, 0.25)
    plan = planner().plan(10.0, [lost, fine], [], StepLoad(2))
    assert plan.demote == [lost]
    assert plan.limits.max_prefill_tokens == COST.target.max_tokens_within(300.0, 40, 512) - 2


@pytest.mark.parametrize("demote_at, demoted", [("batch", True), ("finish", False)])
def test_demotion_at_the_finish_pace_counts_the_steps_that_get_faster(demote_at, demoted):
    """TPOT 10.5 ms; steps of two tokens take 11 ms, of one 10 ms. `long` has 20 tokens left: 30 x
    10.5 = 315 ms in all, 107 ms spent. A request is lost when even a step of no time leaves it
    late: at this batch's pace the 19 steps after this one take 19 x 11 = 209 ms, 1 ms too many.
    `short` leaves after the next step, so at the finish pace they take 11 + 18 x 10 = 191 ms: 17 ms
    to spare. short keeps its TPOT either way (12 x 10.5 - 107 - 11 = 8 ms)."""
    long = decoding(10, 0.107, tpot_ms=10.5, max_tokens=31)
    short = decoding(10, 0.107, tpot_ms=10.5, max_tokens=13)
    plan = planner(demote_at=demote_at).plan(10.0, [long, short], [], StepLoad(2, 2))
    assert plan.demote == ([long] if demoted else [])


def test_the_policy_name_picks_the_demotion_rule():
    assert choose_policy("adaserve", COST).demote_at == "batch"
    assert choose_policy("adaserve:finish", COST).demote_at == "finish"
    with pytest.raises(ValueError, match="adaserve takes ':finish'"):
        choose_policy("adaserve:soon", COST)
    engine, _, _ = sim_engine(policy="adaserve:finish")
    assert engine.policy.demote_at == "finish"


def test_best_effort_requests_constrain_nothing():
    lost = decoding(10, 0.56)
    lost.best_effort = True
    assert planner().plan(10.0, [lost], [], StepLoad(1)).limits.max_prefill_tokens is None


# -- the engine on a simulated runner ----------------------------------------------------------
def sim_engine(max_num_seqs=32, max_tokens=512, seed=0, policy="adaserve"):
    clock = SimClock()
    proposer = SimProposer(ParametricAcceptance(top1=0.8), random.Random(seed))
    config = SimConfig(
        policy=policy, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_tokens, kv_capacity_tokens=20_000
    )
    engine = EngineCore(config.engine_config(), SimRunner(config, COST, clock, proposer), clock)
    assert engine.policy.planner
    return engine, clock, proposer


def add(engine, proposer, rid, prompt, output, slo, reject=False):
    policy = "reject" if reject else "best_effort"
    params = SamplingParams(max_tokens=output, ignore_eos=True, slo=slo, slo_policy=policy)
    request = engine.add_request([SYNTHETIC_TOKEN] * prompt, params, rid)
    proposer.add(rid, "coding")
    return request


def run(engine, limit=10_000):
    outputs = []
    for _ in range(limit):
        if not engine.has_unfinished:
            return outputs
        outputs += engine.step()
    raise AssertionError("the engine did not finish its requests")


def test_an_unattainable_request_is_refused_at_once_and_the_rest_keep_their_slos():
    engine, clock, proposer = sim_engine()
    ok = [add(engine, proposer, f"ok{i}", 64, 32, SLO(tpot_ms=60, ttft_ms=2000)) for i in range(3)]
    refused = add(engine, proposer, "no", 4000, 8, SLO(tpot_ms=60, ttft_ms=100), reject=True)
    outputs = run(engine)
    first = next(o for o in outputs if o.request_id == "no")
    assert first.finish_reason is FinishReason.REFUSED and first.error and "SLO" in first.error
    assert refused.finish_time == 0.0 and refused.num_output_tokens == 0  # before any step ran
    for r in ok:
        assert r.num_output_tokens == 32 and not r.best_effort
        assert r.first_token_time - r.arrival_time <= 2.0
        assert (r.token_times[-1] - r.first_token_time) / 31 <= 0.060


def test_a_demoted_request_is_still_served_to_the_end():
    engine, clock, proposer = sim_engine()
    late = add(engine, proposer, "late", 4000, 8, SLO(tpot_ms=60, ttft_ms=100))
    ok = add(engine, proposer, "ok", 64, 16, SLO(tpot_ms=60, ttft_ms=3000))
    run(engine)
    assert late.best_effort and late.finish_reason is FinishReason.LENGTH and late.num_output_tokens == 8
    assert not ok.best_effort and ok.first_token_time < late.first_token_time  # the SLO request went first


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 2.0),  # arrival
            st.integers(1, 600),  # prompt tokens
            st.integers(1, 40),  # output tokens
            st.sampled_from([None, 20.0, 60.0, 200.0]),  # TPOT target
            st.sampled_from([None, 50.0, 500.0, 5000.0]),  # TTFT target
            st.booleans(),  # reject
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([64, 512]),
    st.sampled_from(["adaserve", "adaserve:finish"]),
)
def test_every_request_ends_and_no_step_exceeds_the_budget(requests, max_tokens, policy):
    """No admitted request is starved forever (each one finishes or is refused), and every step's
    tokens stay within the budget, whatever the deadlines (with either demotion rule)."""
    engine, clock, proposer = sim_engine(max_num_seqs=4, max_tokens=max_tokens, policy=policy)
    step_tokens = []
    execute = engine.runner.execute
    engine.runner.execute = lambda step: step_tokens.append(step.num_batched_tokens) or execute(step)
    pending = sorted(enumerate(requests), key=lambda p: p[1][0])
    added = []
    for _ in range(20_000):
        while pending and pending[0][1][0] <= clock.now:
            i, (_, prompt, output, tpot, ttft, reject) = pending.pop(0)
            added.append(add(engine, proposer, f"r{i}", prompt, output, SLO(tpot, ttft), reject))
        if not engine.has_unfinished:
            if not pending:
                break
            clock.now = pending[0][1][0]
            continue
        num_steps = engine.num_steps
        engine.step()
        if engine.num_steps == num_steps and pending:
            clock.now = max(clock.now, pending[0][1][0])
    assert not pending and not engine.has_unfinished
    for r in added:
        assert r.finish_reason in (FinishReason.LENGTH, FinishReason.REFUSED)
        if r.finish_reason is FinishReason.LENGTH:
            assert r.num_output_tokens == r.params.max_tokens
        else:
            assert r.params.slo_policy == "reject" and r.num_output_tokens == 0
    assert max(step_tokens, default=0) <= max_tokens


def test_best_effort_requests_wait_while_a_request_keeps_its_tpot():
    r, lost = decoding(10, 0.25), decoding(10, 0.56)
    lost.best_effort = True
    assert planner().plan(10.0, [r, lost], [], StepLoad(2, 2)).limits.pause_best_effort
    assert not planner().plan(10.0, [lost], [], StepLoad(1, 1)).limits.pause_best_effort


def test_steps_are_planned_within_the_headroom_and_demotion_judged_on_the_tpot():
    """On its line at 50 ms (10 tokens in 0.5 s): with a 0.9 headroom the plan keeps it on a 45 ms
    line, 40 ms behind already, so prompts get the least a step carries; yet it is not demoted."""
    r = decoding(10, 0.5)
    plan = planner(tpot_headroom=0.9).plan(10.0, [r], [], StepLoad(1, 1))
    assert plan.limits.max_prefill_tokens == BLOCK and not plan.demote
    assert planner().plan(10.0, [r], [], StepLoad(1, 1)).limits.max_prefill_tokens == 40
