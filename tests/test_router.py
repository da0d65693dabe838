"""The replica router (adaserve.deploy.router) on hand-made replica states, and the multi-replica
simulator it drives."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from adaserve.deploy.router import MODES, RouteRequest, Tiers, predict, route
from adaserve.deploy.state import ReplicaState
from adaserve.sched.cost_model import CostModel
from adaserve.sim.cluster import ClusterSimulator
from adaserve.sim.config import SimConfig
from adaserve.sim.workloads import SimRequest
from adaserve.slo import SLO


def state(replica_id: str, **kw) -> ReplicaState:
    """An idle replica: 20 ms steps, +1 ms per request, 100 ms prefill steps, 10 us per prompt token."""
    base = dict(
        replica_id=replica_id,
        step_ms=20.0,
        plain_step_ms=20.0,
        ms_per_request=1.0,
        ms_per_context_token=0.0,
        prefill_step_ms=100.0,
        prefill_ms_per_token=0.01,
        tokens_per_step=1.0,
        num_waiting_prefill_tokens=0,
        num_free_kv_blocks=1000,
        block_size=16,
        num_running=0,
        num_waiting=0,
        max_num_seqs=64,
    )
    base["plain_step_ms"] = kw.get("step_ms", 20.0)
    return ReplicaState(**{**base, **kw})


TIGHT = RouteRequest(100, 50, SLO(tpot_ms=30, ttft_ms=1000))


def test_prediction_worked_example():
    # 4 waiting requests with 2,000 prompt tokens: the step gains 5 requests (5 ms) -> 25 ms; TTFT
    # is the 2,100 queued tokens at 0.5 ms each.
    s = state("a", num_waiting=4, num_waiting_prefill_tokens=2000, prefill_ms_per_token=0.5)
    p = predict(TIGHT, s)
    assert p.tpot_ms == pytest.approx(25.0)
    assert p.ttft_ms == pytest.approx(1050.0)
    assert p.slack == pytest.approx(min(1 - 25 / 30, 1 - 1050 / 1000))
    assert not p.feasible


@pytest.mark.parametrize(
    "replicas, mode, first",
    [
        # A tight running request elsewhere: the new one would push it off its TPOT.
        ([state("a", num_running=5, tightest_tpot_ms=20.5), state("b", num_running=9)], "spread", "b"),
        ([state("a", num_running=5, tightest_tpot_ms=20.5), state("b", num_running=9)], "pack", "b"),
        # Both feasible: spread takes the one with fewer requests, pack the one with less slack.
        ([state("a", num_running=2), state("b", num_running=6, step_ms=26.0)], "spread", "a"),
        ([state("a", num_running=2), state("b", num_running=6, step_ms=26.0)], "pack", "b"),
        # A long prefill queue breaks the TTFT target.
        ([state("a", num_waiting_prefill_tokens=200_000), state("b", num_running=30)], "spread", "b"),
        # No KV room.
        ([state("a", num_free_kv_blocks=3), state("b", num_running=30)], "pack", "b"),
        # Speculation: 60 ms steps gaining 3 tokens each are 20 ms per token.
        ([state("a", step_ms=60.0, plain_step_ms=40.0, tokens_per_step=3.0), state("b", step_ms=40.0)], "spread", "a"),
    ],
)
def test_slo_aware_ranking(replicas, mode, first):
    assert route(TIGHT, replicas, mode, random.Random(0)).choice == first


def test_infeasible_everywhere_best_effort_or_refused():
    replicas = [state("a", step_ms=90.0, num_running=3), state("b", step_ms=50.0, num_running=8)]
    best_effort = route(TIGHT, replicas, "spread", random.Random(0))
    assert not best_effort.feasible and not best_effort.refuse
    assert best_effort.choice == "a"  # fewest requests: where it slows the fewest
    refused = route(replace(TIGHT, slo_policy="reject"), replicas, "spread", random.Random(0))
    assert refused.refuse and refused.ranks == []


def test_backoff_when_every_replica_is_full():
    full = dict(num_running=64, num_waiting=3, max_num_seqs=64)
    decision = route(TIGHT, [state("a", **full), state("b", **full)], "spread", random.Random(0))
    assert decision.backoff
    decision = route(TIGHT, [state("a", **full), state("b")], "spread", random.Random(0))
    assert not decision.backoff and decision.choice == "b"
    assert route(TIGHT, [], "spread", random.Random(0)).backoff


def test_ties_break_at_random():
    replicas = [state(str(k)) for k in range(4)]
    chosen = {route(TIGHT, replicas, "spread", random.Random(seed)).choice for seed in range(40)}
    assert chosen == {"0", "1", "2", "3"}


def test_baselines():
    replicas = [state("a", num_running=9), state("b", num_running=1), state("c", num_running=5)]
    assert [route(TIGHT, replicas, "round_robin", random.Random(0), turn=t).choice for t in range(4)] == list("abca")
    # power of two: of the two it samples, the one with fewer requests; never the busier of a pair.
    for seed in range(20):
        d = route(TIGHT, replicas, "power_of_two", random.Random(seed))
        assert d.choice != "a"
        assert sorted(r[0] for r in d.ranks) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="routing mode"):
        route(TIGHT, replicas, "fastest", random.Random(0))


@pytest.mark.parametrize(
    "num_replicas, shares, sizes",
    [
        (8, "0.5,0.5", [4, 4]),
        (8, "0.375,0.625", [3, 5]),
        (3, "0.5,0.5", [2, 1]),
        (2, "0.1,0.9", [1, 1]),  # every tier keeps one replica
        (2, "0.9,0.1", [1, 1]),
        (8, "0.5,0.25,0.25", [4, 2, 2]),
        (7, "0.5,0.25,0.25", [3, 2, 2]),  # 3.5, 1.75, 1.75: each within 0.5
        (3, "0.8,0.1,0.1", [1, 1, 1]),
    ],
)
def test_tiers_split_by_id(num_replicas, shares, sizes):
    replicas = [state(f"r{k:02d}") for k in reversed(range(num_replicas))]
    tiers = Tiers.parse(",".join(["35", "300", "900"][: len(sizes) - 1]), shares).split(replicas)
    assert [s.replica_id for tier in tiers for s in tier] == [f"r{k:02d}" for k in range(num_replicas)]
    assert [len(t) for t in tiers] == sizes


def test_fewer_replicas_than_tiers_the_loosest_share_the_last():
    a, b = state("a"), state("b")
    assert Tiers.parse("35,300").split([b, a]) == [[a], [b], [b]]
    assert Tiers.parse("35,300").split([a]) == [[a], [a], [a]]


def test_tiered_keeps_tight_and_loose_requests_apart():
    tiers = Tiers.parse("35")  # TIGHT's 30 ms is tight; 300 ms is loose; equal shares
    loose = RouteRequest(100, 50, SLO(tpot_ms=300, ttft_ms=5000))
    # The tight tier (a, b) is busier than the loose one (c, d): each request still stays in its own.
    replicas = [state("a", num_running=6), state("b", num_running=5), state("c"), state("d", num_running=1)]
    for seed in range(10):
        d = route(TIGHT, replicas, "tiered", random.Random(seed), tiers=tiers)
        assert d.choice == "b" and d.feasible
        assert [r[0] for r in d.ranks] == ["b", "a", "c", "d"]  # the other tier last, for failover
        assert route(loose, replicas, "tiered", random.Random(seed), tiers=tiers).choice == "c"
    # No TPOT target is loose; three tiers: the first bound that holds.
    three = Tiers.parse("35,100", "0.5,0.25,0.25")
    assert [three.tier_of(t) for t in (30, 35, 36, 100, 101, None)] == [0, 0, 1, 1, 2, 2]
    assert route(RouteRequest(10, 5), replicas, "tiered", random.Random(0), tiers=tiers).choice == "c"
    # Infeasible in its own tier: refused when asked, though the other tier has room.
    slow = [state("a", step_ms=90.0), state("b", step_ms=90.0), state("c"), state("d")]
    refused = route(replace(TIGHT, slo_policy="reject"), slow, "tiered", random.Random(0), tiers=tiers)
    assert refused.refuse
    with pytest.raises(ValueError, match="needs Tiers"):
        route(TIGHT, replicas, "tiered", random.Random(0))
    with pytest.raises(ValueError, match="share"):
        Tiers((35.0,), (1.0, 0.0))
    with pytest.raises(ValueError, match="ascending"):
        Tiers.parse("400,150", "0.5,0.25,0.25")


def test_state_round_trips_as_routing_stats():
    s = state("a", tightest_tpot_ms=40.0, slo_demand=1.5)
    assert ReplicaState.from_dict({**s.to_dict(), "unknown": 1}) == s


def cluster_workload(n: int, gap_s: float) -> list[SimRequest]:
    tight, loose = SLO(tpot_ms=40, ttft_ms=2000), SLO(tpot_ms=400, ttft_ms=20_000)
    return [SimRequest(i * gap_s, "c", 64, 32, tight if i % 3 else loose) for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
def test_cluster_simulator_serves_every_request(mode):
    cost = CostModel.from_table({1: 10.0, 64: 12.0, 512: 60.0, 2048: 240.0})
    config = SimConfig(policy="none", max_num_seqs=16, max_num_batched_tokens=512, kv_capacity_tokens=8192)
    cluster = ClusterSimulator(config, cost, None, 3, mode, tiers=Tiers.parse("100"))
    records = cluster.run(cluster_workload(60, 0.02))
    assert len(records) == 60 and all(r.num_output_tokens == 32 and r.error is None for r in records)
    assert sum(cluster.stats.num_routed.values()) == 60
    assert all(cluster.stats.num_routed[k] > 0 for k in range(3))  # every replica serves
    assert [r.arrival_time for r in records] == [i * 0.02 for i in range(60)]


def test_cluster_of_one_is_the_single_simulator():
    from adaserve.sim.simulator import Simulator

    cost = CostModel.from_table({1: 10.0, 64: 12.0, 512: 60.0, 2048: 240.0})
    config = SimConfig(policy="none", max_num_seqs=8, max_num_batched_tokens=256, kv_capacity_tokens=8192)
    workload = cluster_workload(30, 0.01)
    single = Simulator(config, cost, None).run(workload)
    cluster = ClusterSimulator(config, cost, None, 1, "spread").run(workload)
    assert [r.chunk_times for r in cluster] == [r.chunk_times for r in single]


def fake_engine(step_interval_s: float, num_running: int = 4):
    """What from_engine reads of an EngineCore: `num_running` requests decoding plainly (one token a
    step, no drafts accepted), 17 recent steps `step_interval_s` apart."""
    from types import SimpleNamespace

    from adaserve.sched.planner import StepLoad

    params = SimpleNamespace(slo=SLO(tpot_ms=100), max_tokens=64)
    running = [
        SimpleNamespace(
            num_computed_tokens=0, num_pending_tokens=1, params=params, best_effort=False, num_output_tokens=8
        )
        for _ in range(num_running)
    ]
    steps = [
        SimpleNamespace(
            time=k * step_interval_s,
            num_verified_tokens=num_running,
            num_proposed=0,
            num_accepted=0,
            num_prefill_tokens=0,
        )
        for k in range(17)
    ]
    return SimpleNamespace(
        scheduler=SimpleNamespace(running=running, waiting=[]),
        config=SimpleNamespace(max_num_batched_tokens=512, block_size=16, max_num_seqs=16),
        step_load=lambda: StepLoad(num_running, num_running),
        kv=SimpleNamespace(num_free_blocks=100),
        spec=SimpleNamespace(stats=SimpleNamespace(steps=steps)),
    )


@pytest.mark.parametrize("interval_s, slowdown", [(0.005, 1.0), (0.010, 1.0), (0.030, 3.0)])
def test_state_slows_the_plain_pace_as_much_as_measured_steps_are_slower(interval_s, slowdown):
    # A flat 10 ms cost model: steps measured 30 ms apart are 3x slower than it says, and the plain
    # pace (the router takes the faster of it and the speculative one) must not look 10 ms then.
    from adaserve.deploy.state import from_engine

    s = from_engine(fake_engine(interval_s), CostModel.from_table({1: 10.0, 512: 10.0}), "a")
    assert s.step_ms == pytest.approx(10.0 * slowdown)
    assert s.plain_step_ms == pytest.approx(10.0 * slowdown)
    assert s.slo_demand == pytest.approx(4 * 10.0 * slowdown / 100)
