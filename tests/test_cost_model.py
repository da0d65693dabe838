"""Cost model arithmetic: monotone interpolation, context term, budgets, JSON round trip."""

import pytest

from adaserve.sched.cost_model import CostModel, LatencyCurve
from adaserve.spec.registry import choose_policy, slo_step_budget

CURVE = LatencyCurve((1, 8, 16), (30.0, 40.0, 60.0), ms_per_context_token=0.001)


@pytest.mark.parametrize(
    "tokens, context, ms",
    [(1, 0, 30.0), (12, 0, 50.0), (12, 1000, 51.0), (24, 0, 80.0), (0, 0, 30.0), (4, 0, 30 + 3 * 10 / 7)],
)
def test_interpolation_worked_example(tokens, context, ms):
    assert CURVE(tokens, context) == pytest.approx(ms)


def test_context_pair_term_worked_example():
    curve = LatencyCurve((1, 8, 16), (30.0, 40.0, 60.0), 0.001, ms_per_seq=2.0, ms_per_context_pair=1e-5)
    assert curve(12, 1000, num_context_pairs=11 * 1000) == pytest.approx(51.11)
    assert curve(12, 1000, num_seqs=3) == pytest.approx(55.0)
    rows = LatencyCurve((1, 8, 16), (30.0, 40.0, 60.0), ms_per_logit_row=0.5)
    assert rows(12, num_extra_logit_rows=11) == pytest.approx(55.5)  # a 12-node tree: 11 rows beyond its root


def test_terms_split_the_worked_example_and_sum_to_the_latency():
    curve = LatencyCurve(
        (1, 8, 16), (30.0, 40.0, 60.0), 0.001, ms_per_seq=2.0, ms_per_context_pair=1e-5, ms_per_logit_row=0.5
    )
    terms = curve.terms(12, 1000, num_seqs=1, num_context_pairs=11 * 1000, num_extra_logit_rows=11)
    assert (
        terms.base_ms,
        terms.tokens_ms,
        terms.context_ms,
        terms.pairs_ms,
        terms.rows_ms,
        terms.seqs_ms,
    ) == pytest.approx((30.0, 20.0, 1.0, 0.11, 5.5, 0.0))
    assert terms.total_ms == pytest.approx(56.61)
    for shape in [(1, 0, 1, 0, 0), (4, 300, 3, 0, 2), (24, 5000, 2, 900, 30), (0, 0, 1, 0, 0)]:
        assert curve.terms(*shape).total_ms == pytest.approx(curve(*shape))
    assert curve.terms(4, num_seqs=3).num_extra_seqs == 2


def test_a_curve_at_a_fixed_batch_is_the_same_latency():
    curve = LatencyCurve((1, 8, 16), (30.0, 40.0, 60.0), 0.001, ms_per_seq=2.0, ms_per_context_pair=1e-5)
    at = curve.at(1000, num_seqs=3)
    assert [at(n) for n in (1, 5, 12, 40)] == [curve(n, 1000, 3) for n in (1, 5, 12, 40)]  # exactly


def test_step_context_pairs():
    """A 512-token chunk after 1000 cached tokens and a decode after 300: 511 x 1000 pairs."""
    from types import SimpleNamespace

    from adaserve.sched.scheduler import ScheduledChunk, SchedulerOutput

    def chunk(cached, new):
        return ScheduledChunk(SimpleNamespace(num_computed_tokens=cached), new, [])

    step = SchedulerOutput(1024, [chunk(1000, 512), chunk(300, 1)])
    assert (step.num_context_tokens, step.num_context_pairs) == (1300, 511 * 1000)


def test_noise_dips_are_removed():
    c = LatencyCurve((1, 2, 4), (30.0, 26.0, 40.0))
    assert c.latency_ms == (28.0, 28.0, 40.0)  # the violating pair is pooled
    spike = LatencyCurve((1, 2, 4, 8), (30.0, 90.0, 31.0, 32.0))  # one noisy point
    assert spike.latency_ms[-1] == 51.0 and list(spike.latency_ms) == sorted(spike.latency_ms)
    assert all(c(n) <= c(n + 1) for n in range(1, 20))


def test_budgets():
    cost = CostModel(CURVE, LatencyCurve((1, 4), (10.0, 30.0)))
    assert CURVE.max_tokens_within(50.0) == 12
    assert cost.verify_budget(2.0) == 16  # 2 x 30 ms = 60 ms: 40 + (n - 8) * 2.5 <= 60
    assert cost.draft_budget(2.0) == 2  # 10 + (n - 1) * 20 / 3 <= 20
    assert cost.speculation_ms(num_seqs=2, depth=3, width=2) == pytest.approx(cost.draft_ms(4) + 2 * cost.draft_ms(4))


def test_json_round_trip(tmp_path):
    cost = CostModel(CURVE, LatencyCurve((1,), (5.0,), 0.5, 0.25, 1e-6), {"model": "m"})
    cost.save(tmp_path / "p.json")
    assert CostModel.load(tmp_path / "p.json") == cost


@pytest.mark.parametrize("bad", [((), ()), ((1, 2), (1.0,)), ((2, 1), (1.0, 2.0)), ((0, 1), (1.0, 2.0))])
def test_bad_curves(bad):
    with pytest.raises(ValueError):
        LatencyCurve(*bad)


def test_slo_step_budget():
    cost = CostModel(CURVE)
    assert slo_step_budget(cost, [], 512, 16) == 512
    assert slo_step_budget(cost, [200.0, 50.0], 512, 4) == 12  # tightest TPOT 50 ms -> 12 tokens
    assert slo_step_budget(cost, [10.0], 512, 4) == 4  # never below the floor


def test_policies_needing_a_cost_model_say_so():
    with pytest.raises(ValueError, match="cost model"):
        choose_policy("adaserve")
    with pytest.raises(ValueError, match="policies: none, chunked"):
        choose_policy("fastest")
    assert choose_policy("chain:3").spec.depth == 3
    assert choose_policy("chunked", CostModel(CURVE)).spec is None


def test_engine_profiles_once_per_model_pair_and_caches(tiny_model_dirs, tmp_path, monkeypatch):
    from adaserve.config import EngineConfig
    from adaserve.engine.core import EngineCore
    from adaserve.engine.profiler import profile_key

    monkeypatch.setenv("ADASERVE_CACHE", str(tmp_path))
    target = str(tiny_model_dirs["llama"])
    config = EngineConfig(model=target, draft=target, spec_policy="adaserve", max_num_batched_tokens=16)
    first = EngineCore(config).cost_model
    assert first.target.num_tokens == (1, 2, 4, 8, 12, 16) and first.draft is not None
    assert list(first.target.latency_ms) == sorted(first.target.latency_ms)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1
    assert EngineCore(config).cost_model == first  # read back from the cache, not measured again
    # A draft cut to its first layers is a different model: its own profile.
    args = (tiny_model_dirs["llama"], tiny_model_dirs["llama"])
    assert profile_key(*args, None, "cpu", "float32", "gguf") != profile_key(*args, 1, "cpu", "float32", "gguf")
    # So is another weight format.
    assert profile_key(*args, None, "cpu", "float32", "gguf") != profile_key(*args, None, "cpu", "float32", "fp32")
    # And new kernel code: its latencies are measured again.
    key = profile_key(*args, None, "cpu", "float32", "gguf")
    monkeypatch.setattr("adaserve.engine.profiler.kernel_version", lambda: "another build")
    assert profile_key(*args, None, "cpu", "float32", "gguf") != key


def test_per_sequence_term_and_json_round_trip():
    curve = LatencyCurve((1, 8), (10.0, 12.0), ms_per_context_token=0.01, ms_per_seq=2.0)
    assert curve(8, 100, num_seqs=8) == pytest.approx(12.0 + 1.0 + 14.0)  # one sequence costs nothing extra
    assert curve(8, 100) == pytest.approx(13.0)
    cost = CostModel(curve, curve)
    assert CostModel.from_json(cost.to_json()).target.ms_per_seq == 2.0
    assert cost.speculation_ms(4, 2, 1) == pytest.approx(curve(8, 0, 4) + curve(4, 0, 4))
