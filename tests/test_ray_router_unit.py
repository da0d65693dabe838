"""The Ray Serve glue of the router (adaserve.deploy.ray_app) on fake replicas and a fake
autoscaling context: no Ray cluster. Skipped where Ray is not installed (CI's router coverage is
tests/test_router.py, on the pure function these call)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve")

from adaserve.deploy.ray_app import desired_replicas, rank_replicas, slo_autoscaling_policy
from adaserve.deploy.router import RouteRequest, Tiers
from adaserve.slo import SLO
from tests.test_router import state

TIGHT = RouteRequest(100, 50, SLO(tpot_ms=30, ttft_ms=1000))


@dataclass(frozen=True)
class FakeReplica:  # what rank_replicas reads of a RunningReplica
    replica_id: SimpleNamespace

    @classmethod
    def named(cls, key: str) -> FakeReplica:
        return cls(SimpleNamespace(unique_id=key))


def ids(ranks: list[list[FakeReplica]]) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


def test_ranks_follow_the_router_and_unreported_replicas_come_next():
    replicas = [FakeReplica.named(k) for k in "abc"]
    states = {"a": state("a", num_running=9), "b": state("b", num_running=1)}  # c has not reported
    ranks, refuse, backoff = rank_replicas(replicas, TIGHT, "spread", random.Random(0), 0, states)
    assert ids(ranks) == [["b"], ["c"], ["a"]] and not refuse and not backoff
    # Nothing feasible among the reported ones: the unreported replica (likely idle) goes first.
    slow = {"a": state("a", step_ms=90.0), "b": state("b", step_ms=90.0)}
    ranks, _, _ = rank_replicas(replicas, TIGHT, "spread", random.Random(0), 0, slow)
    assert ids(ranks)[0] == ["c"]


def test_refusal_and_backoff():
    replicas = [FakeReplica.named(k) for k in "ab"]
    slow = {"a": state("a", step_ms=90.0), "b": state("b", step_ms=90.0)}
    reject = RouteRequest(100, 50, SLO(tpot_ms=30), slo_policy="reject")
    ranks, refuse, _ = rank_replicas(replicas, reject, "spread", random.Random(0), 0, slow)
    assert refuse and ids(ranks) == [["a", "b"]]  # any replica answers with the refusal at once
    full = dict(num_running=64, num_waiting=3, max_num_seqs=64)
    states = {"a": state("a", **full), "b": state("b", **full)}
    _, refuse, backoff = rank_replicas(replicas, TIGHT, "spread", random.Random(0), 0, states)
    assert backoff and not refuse


def test_tiered_through_the_ray_glue():
    replicas = [FakeReplica.named(k) for k in "abcd"]
    states = {k: state(k, num_running=n) for k, n in zip("abcd", (6, 5, 0, 1))}
    ranks, _, _ = rank_replicas(replicas, TIGHT, "tiered", random.Random(0), 0, states, Tiers((35.0,), (0.5, 0.5)))
    assert ids(ranks) == [["b"], ["a"], ["c"], ["d"]]


@pytest.mark.parametrize(
    "pressures, current, lo, hi, expected",
    [
        ([1.2, 0.8], 2, 1, 8, 3),  # the worked example: ceil(2.0 / 0.8)
        ([0.1, 0.1, 0.1], 3, 1, 8, 1),  # idle: down to what the load needs
        ([0.1, 0.1], 2, 2, 8, 2),  # never below the minimum
        ([3.0, 3.0], 2, 1, 4, 4),  # never above the maximum
        ([], 3, 1, 8, 3),  # no stats yet: keep what runs
    ],
)
def test_desired_replicas(pressures, current, lo, hi, expected):
    assert desired_replicas(pressures, current, lo, hi) == expected


def test_autoscaling_policy_reads_the_replicas_slo_pressure():
    ctx = SimpleNamespace(
        aggregated_metrics={"slo_pressure": {"r1": 1.2, "r2": 0.8}},
        current_num_replicas=2,
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8,
        policy_state=None,
    )
    assert slo_autoscaling_policy(ctx) == (3, {})
    ctx.aggregated_metrics = None
    assert slo_autoscaling_policy(ctx) == (2, {})
