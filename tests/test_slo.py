"""SLO arithmetic on hand-made timelines: TPOT/TTFT, attainment, goodput, A(r), class parsing."""

import pytest

from adaserve.sampling import SamplingParams
from adaserve.slo import SLO, RequestTiming, parse_slo_class, required_tokens, summarize, summarize_by_category


def timing(arrival, first, last, n, tpot=None, ttft=None, category="default"):
    return RequestTiming(arrival, first, last, n, SLO(tpot, ttft), category)


@pytest.mark.parametrize(
    "t, ttft_s, tpot_s, attained",
    [
        (timing(0.0, 0.5, 2.5, 21, tpot=100), 0.5, 0.1, True),  # exactly on the line
        (timing(0.0, 0.5, 2.6, 21, tpot=100), 0.5, 0.105, False),
        (timing(0.0, 0.5, 2.5, 21, tpot=100, ttft=400), 0.5, 0.1, False),  # TTFT breaks it
        (timing(0.0, 0.3, 2.5, 21, tpot=100, ttft=400), 0.3, 0.11, False),
        (timing(1.0, 1.2, 1.2, 1, tpot=1), 0.2, None, True),  # one token: no decode phase
        (timing(0.0, None, None, 0, tpot=100), None, None, False),  # never produced a token
        (timing(0.0, 5.0, 50.0, 10), 5.0, 5.0, True),  # no SLO: always attained
    ],
)
def test_request_timing(t, ttft_s, tpot_s, attained):
    assert t.ttft_s == pytest.approx(ttft_s) if ttft_s is not None else t.ttft_s is None
    assert t.tpot_s == pytest.approx(tpot_s) if tpot_s is not None else t.tpot_s is None
    assert t.attained is attained


def test_attainment_and_goodput():
    timings = [
        timing(0.0, 1.0, 3.0, 21, tpot=100, category="coding"),  # attained, 21 tokens
        timing(1.0, 2.0, 10.0, 41, tpot=100, category="coding"),  # 200 ms/token: violated
        timing(2.0, 2.5, 6.0, 8, tpot=1000, category="chat"),  # attained, 8 tokens
    ]
    s = summarize(timings)
    assert s.wall_time_s == pytest.approx(10.0)
    assert (s.num_requests, s.num_attained) == (3, 2)
    assert s.attainment == pytest.approx(2 / 3)
    assert s.goodput == pytest.approx(29 / 10.0)
    assert s.throughput == pytest.approx(70 / 10.0)
    by = summarize_by_category(timings)
    assert by["coding"].attainment == pytest.approx(0.5)
    assert by["chat"].goodput == pytest.approx(0.8)  # same 10 s wall time for every category
    assert by["coding"].goodput + by["chat"].goodput == pytest.approx(by["all"].goodput)


def test_required_tokens_worked_example():
    # tpot 50 ms, 10 tokens decoded in 0.5 s, next iteration 0.1 s -> 2 tokens needed
    assert required_tokens(0.5, 0.1, 50.0, 10) == pytest.approx(2.0)
    assert required_tokens(0.5, 0.1, 50.0, 13) == pytest.approx(-1.0)  # ahead of its line


@pytest.mark.parametrize(
    "text, tpot_ms, scale, ttft_ms",
    [
        ("coding=tpot:1.2x", None, 1.2, None),
        ("chat=tpot:50ms", 50.0, None, None),
        ("batch = tpot:2s, ttft:30s", 2000.0, None, 30000.0),
        ("x=ttft:500ms", None, None, 500.0),
    ],
)
def test_parse_slo_class(text, tpot_ms, scale, ttft_ms):
    c = parse_slo_class(text)
    assert (c.tpot_ms, c.tpot_scale, c.ttft_ms) == (tpot_ms, scale, ttft_ms)


def test_relative_class_resolves_against_measured_latency():
    assert parse_slo_class("coding=tpot:1.5x").resolve(200.0).slo() == SLO(tpot_ms=300.0)
    with pytest.raises(ValueError, match="needs a measured latency"):
        parse_slo_class("coding=tpot:1.5x").resolve(None)
    # ttft:10x: 10 unloaded token times plus 3 x the prompt's prefill (here 400 ms).
    coding = parse_slo_class("coding=tpot:1.2x,ttft:10x").resolve(50.0)
    assert coding.slo(prefill_ms=400.0) == SLO(tpot_ms=60.0, ttft_ms=500.0 + 1200.0)
    assert parse_slo_class("batch=ttft:2s").resolve(None).slo(prefill_ms=400.0) == SLO(ttft_ms=2000.0)


@pytest.mark.parametrize(
    "text", ["coding", "=tpot:1x", "a=tpot:", "a=tpot:-5ms", "a=ttft:0x", "a=speed:5ms", "a=tpot:5h"]
)
def test_bad_slo_classes_are_clear_errors(text):
    with pytest.raises(ValueError):
        parse_slo_class(text)


@pytest.mark.parametrize("bad", [dict(tpot_ms=0), dict(tpot_ms=-1), dict(ttft_ms=float("nan")), dict(tpot_ms="fast")])
def test_bad_slo_values(bad):
    with pytest.raises(ValueError, match="positive"):
        SamplingParams(slo=bad)


def test_sampling_params_accept_slo_dicts():
    assert SamplingParams(slo={"tpot_ms": 80}).slo == SLO(tpot_ms=80)
