"""Workload generation: deterministic with a seed, mix and rates as asked, SLOs from the unloaded
latency, save/replay round trip; latency percentiles on hand-made records."""

import random
import statistics

import pytest

from adaserve.bench.workload import (
    WorkloadSpec,
    arrival_times,
    build_workload,
    load_workload,
    parse_pieces,
    save_workload,
)

PROMPTS = {"coding": ["def f():"], "chat": ["hi", "hello"], "summarization": ["long text"]}


def test_deterministic_for_a_seed():
    spec = WorkloadSpec(num_requests=50, seed=3)
    assert build_workload(spec, 100.0, PROMPTS) == build_workload(spec, 100.0, PROMPTS)
    assert build_workload(spec, 100.0, PROMPTS) != build_workload(WorkloadSpec(num_requests=50, seed=4), 100.0, PROMPTS)


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_rate_and_mix(arrival):
    spec = WorkloadSpec(rate=2.0, num_requests=4000, arrival=arrival, cv=2.0, seed=1)
    reqs = build_workload(spec, 100.0, PROMPTS)
    times = [r.arrival_s for r in reqs]
    assert times == sorted(times) and len(reqs) == 4000
    assert len(reqs) / times[-1] == pytest.approx(2.0, rel=0.1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert cv == pytest.approx(1.0 if arrival == "poisson" else 2.0, rel=0.15)
    share = {c: sum(r.category == c for r in reqs) / len(reqs) for c in PROMPTS}
    assert share == pytest.approx({"coding": 0.6, "chat": 0.2, "summarization": 0.2}, abs=0.03)


def test_slos_and_urgent_share_and_scale():
    spec = WorkloadSpec(num_requests=2000, urgent_share=0.9, slo_scale=0.5, output_tokens=64, seed=2)
    reqs = build_workload(spec, 200.0, PROMPTS)
    assert sum(r.category == "coding" for r in reqs) / len(reqs) == pytest.approx(0.9, abs=0.03)
    tpots = {r.category: r.slo.tpot_ms for r in reqs}
    assert tpots == {"coding": 120.0, "chat": 200.0, "summarization": 600.0}  # multiples x 200 x 0.5
    assert {r.max_tokens for r in reqs} == {64}


def test_a_calibrated_prefill_gives_ttft_targets_that_grow_with_the_prompt():
    """ttft = (multiple x unloaded + 3 x prefill) x scale; "def f():" is 2 tokens at 4 chars each,
    "long text" 2: coding (10 x 100 + 3 x 2 x 5) x 0.5 = 515 ms, summarization (40 x 100 + 30) x 0.5."""
    spec = WorkloadSpec(num_requests=200, prefill_ms_per_token=5.0, slo_scale=0.5, seed=2)
    ttfts = {r.category: r.slo.ttft_ms for r in build_workload(spec, 100.0, PROMPTS)}
    assert ttfts["coding"] == 515.0 and ttfts["summarization"] == 2015.0
    assert all(r.slo.ttft_ms is None for r in build_workload(WorkloadSpec(num_requests=20), 100.0, PROMPTS))


def test_fluctuating_rates_follow_the_pieces():
    spec = WorkloadSpec(arrival="fluctuating", pieces="100:0.5,100:4", num_requests=None, duration_s=400, seed=0)
    times = arrival_times(spec, random.Random(0))
    counts = [sum(lo <= t < lo + 100 for t in times) for lo in (0, 100, 200, 300)]
    assert counts[0] == pytest.approx(50, rel=0.35) and counts[1] == pytest.approx(400, rel=0.15)
    assert counts[2] == pytest.approx(50, rel=0.35) and counts[3] == pytest.approx(400, rel=0.15)
    assert max(times) < 400


def test_duration_limit_and_save_replay(tmp_path):
    spec = WorkloadSpec(rate=1.0, num_requests=None, duration_s=30.0, seed=5)
    reqs = build_workload(spec, 50.0, PROMPTS)
    assert reqs and all(r.arrival_s < 30.0 for r in reqs)
    save_workload(tmp_path / "w.jsonl", reqs)
    assert load_workload(tmp_path / "w.jsonl") == reqs


@pytest.mark.parametrize(
    "bad",
    [dict(rate=0), dict(arrival="uniform"), dict(urgent_share=1.5), dict(num_requests=None), dict(mix={"coding": 0})],
)
def test_bad_specs(bad):
    with pytest.raises(ValueError):
        WorkloadSpec(**bad)


@pytest.mark.parametrize("bad", ["", "30", "30:x", "0:1", "30:0"])
def test_bad_pieces(bad):
    with pytest.raises(ValueError):
        parse_pieces(bad)


def test_dataset_prompts_exist():
    from adaserve.bench.datasets import category_prompts

    for category in ("coding", "chat", "summarization"):
        prompts = category_prompts(category)
        assert len(prompts) > 100 and all(isinstance(p, str) and p for p in prompts[:50])


def test_report_arithmetic_on_hand_made_records():
    from adaserve.bench.client import BenchRecord
    from adaserve.bench.report import bench_report, percentile
    from adaserve.slo import SLO

    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5
    records = [
        BenchRecord("coding", SLO(tpot_ms=100), 0.0, 0.5, [0.5, 1.0, 1.5], 11),  # 100 ms/token: attained
        BenchRecord("coding", SLO(tpot_ms=100), 1.0, 2.0, [2.0, 4.0], 11),  # 200 ms/token: violated
        BenchRecord("chat", SLO(tpot_ms=100), 2.0, None, [], 0, error="HTTP 500"),  # failed: violated
    ]
    rep = bench_report(records, wall_time_s=10.0)["categories"]
    assert rep["coding"]["attainment"] == 0.5 and rep["coding"]["goodput_tokens_per_s"] == pytest.approx(1.1)
    assert rep["all"]["violations"] == 2 and rep["all"]["num_errors"] == 1
    assert rep["coding"]["tpot_ms"]["median"] == pytest.approx(150.0)
    assert rep["coding"]["ttft_ms"]["mean"] == pytest.approx(750.0)
    assert rep["chat"]["ttft_ms"] is None


COMMITTED_POINT = "benchmarks/results/sweep_rate/none_rate_0.08.json"  # written by `bench sweep` before BenchConfig


def test_a_committed_bench_result_still_rebuilds_its_requests():
    import json

    from adaserve.bench.run import sent_requests, workload_spec

    result = json.loads(open(COMMITTED_POINT).read())
    requests = sent_requests(result)
    assert len(requests) == len(result["records"]) == 16
    assert workload_spec(result["args"]) == WorkloadSpec(rate=0.08, num_requests=16, output_tokens=48)


def test_a_sweep_point_records_its_args_as_before_without_the_api_key():
    """The sweep that wrote COMMITTED_POINT, run again: its point's "args" are the same, key for key
    and in order, but the API key and flags added since."""
    import json
    from pathlib import Path

    from adaserve.bench.sweep import _point_config, sweep_config
    from adaserve.cli import build_parser

    old = json.loads(open(COMMITTED_POINT).read())["args"]
    flags = "--num-requests 16 --output-tokens 48 --values 0.08,0.16,0.32,0.64 --out-dir /work/sweep_new"
    args = build_parser().parse_args(["bench", "sweep", *flags.split(), "--step-log-dir", "/work/sweep_new/step_logs"])
    config = sweep_config(args)
    point = _point_config(
        config, "none", old["url"], old["model"], old["unloaded_tpot_ms"], 0.08, Path(old["out"])
    ).recorded_args()
    assert point.pop("no_ttft") is False  # (flags added since: TTFT targets are now on by default,
    assert point.pop("prefill_ms_per_token") is None  # calibrated unless given,
    assert point.pop("reuse_server") is False  # every point has its own server,
    assert point.pop("protocol") == "ours"  # and the protocol is named)
    assert list(point.items()) == [(k, v) for k, v in old.items() if k != "api_key"]
    peer = _point_config(config, "vllm:plain", old["url"], old["model"], 100.0, 0.16, Path(old["out"]))
    assert not peer.send_slo and peer.recorded_args()["no_slo"] and peer.workload.rate == 0.16


def test_bench_args_are_the_command_line_without_the_api_key():
    from adaserve.bench.run import BenchConfig, bench_config, workload_spec
    from adaserve.cli import build_parser

    args = build_parser().parse_args(["bench", "--api-key", "s3cret", "--rate", "2", "--no-slo", "--out", "o.json"])
    config = bench_config(args)
    assert config.api_key == "s3cret" and not config.send_slo and config.workload.rate == 2.0
    plain = {k: v for k, v in vars(args).items() if k not in ("api_key", "func")}
    assert list(config.recorded_args().items()) == list(plain.items())
    # A workload the flags can't spell (mix, SLO multiples, ...) is recorded too, and read back.
    spec = WorkloadSpec(mix={"chat": 1.0}, slo_multiples={"chat": 3.0}, ttft_prefill_scale=2.0, seed=5)
    recorded = BenchConfig(workload=spec, api_key="s3cret").recorded_args()
    assert workload_spec(recorded) == spec and "api_key" not in recorded
    assert "mix" not in BenchConfig().recorded_args()


def test_the_demo_report_names_every_late_first_token_and_whether_it_was_demoted(capsys):
    from adaserve.bench.client import BenchRecord
    from adaserve.bench.demo import print_report
    from adaserve.slo import SLO

    slo = SLO(tpot_ms=100.0, ttft_ms=1000.0)
    on_time = BenchRecord("coding", slo, 0.0, 0.5, [0.5, 0.6], 2, server_usage={"slo_demoted": False})
    late = BenchRecord("coding", slo, 0.0, 3.0, [3.0, 3.1], 2, server_usage={"slo_demoted": True})
    print_report([on_time, late], wall_s=4.0)
    out = capsys.readouterr().out
    assert "coding: TTFT 3000 ms over its 1000 ms target (demoted: served best-effort)" in out
    assert "1 over their TTFT target" in out and "50%" in out


@pytest.mark.parametrize("reuse_server, num_servers", [(False, 3), (True, 1)])
def test_a_sweep_starts_a_fresh_server_per_point_unless_told_to_reuse_one(
    monkeypatch, tmp_path, reuse_server, num_servers
):
    """Every point sends the same prompts, so a server's prompt cache would carry over between points."""
    from adaserve.bench import sweep as sweep_module
    from adaserve.bench.run import BenchConfig

    started, calibrations = [], []

    class FakeServer:
        def terminate(self):
            pass

        def wait(self, timeout=None):
            pass

    def fake_run_bench(config):
        return {"wall_time_s": 1.0, "categories": {"all": {"attainment": 1.0, "goodput_tokens_per_s": 1.0}}}

    monkeypatch.setattr(
        sweep_module, "start_server", lambda config, policy, port: started.append(policy) or FakeServer()
    )
    monkeypatch.setattr(sweep_module, "wait_healthy", lambda url, server, timeout_s: None)
    monkeypatch.setattr(sweep_module, "served_model", lambda url: "m")
    monkeypatch.setattr(sweep_module, "calibrate", lambda url, model: calibrations.append(url) or 50.0)
    monkeypatch.setattr(sweep_module, "with_ttft_targets", lambda bench, url, model, unloaded: bench)
    monkeypatch.setattr(sweep_module, "run_bench", fake_run_bench)
    monkeypatch.setattr(sweep_module, "plot_sweep", lambda summary, path: None)
    config = sweep_module.SweepConfig(
        bench=BenchConfig(), values=(0.1, 0.2, 0.3), policies=("none",), out_dir=tmp_path, reuse_server=reuse_server
    )
    summary = sweep_module.sweep(config)
    assert started == ["none"] * num_servers and len(calibrations) == 1  # calibrated once, on the first server
    assert [p["value"] for p in summary["results"]["none"]] == [0.1, 0.2, 0.3]
